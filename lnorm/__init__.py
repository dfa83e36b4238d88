"""lnorm: the paper's normalisers, recurrent cells, trainer and data pipelines."""
