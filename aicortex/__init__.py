"""aicortex: talk to many Ollama servers as if they were one."""
__version__ = "0.1.0"
