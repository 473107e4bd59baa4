-- Why a run ended as it did when no task of it said so: a run left `running` by a killed process is marked
-- failed when the next run of its dataset starts, with the reason here (store/housekeeping.py).
alter table runs add column end_reason text;
