"""Raw sources in: planning files into partitions, reading them, mapping formats, ingesting."""
