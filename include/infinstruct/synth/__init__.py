"""Phase 2, chat synthesis: ability tagging, seed selection, evolution, responses, judging, diagnosis."""
