"""Experiment tooling: a resumable sweep runner and the plots/tables of the paper's figures."""
