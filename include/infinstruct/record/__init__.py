"""The record model: the conversation schema, text normalisation, and the closed vocabulary of reasons."""
