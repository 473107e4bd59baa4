"""Model helpers: sentence embeddings, the OpenAI-compatible LLM client, language identification."""
