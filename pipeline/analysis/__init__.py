"""What the runs mean: diagnosis of a curve, novelty of a sample, and comparison reports with plots and fits."""
