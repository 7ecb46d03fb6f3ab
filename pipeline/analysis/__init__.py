"""What a set of runs means: their curves loaded from MLflow, compared in reports with plots, fits and findings."""
