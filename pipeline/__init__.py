"""GPT Pretraining Lab. The modules here are the commands (download, tokenize, train, generate, sweep, report,
dashboard); the library lives in one sub-package per concern: data, training, tracking, analysis, sweeps."""
