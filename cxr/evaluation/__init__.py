"""Evaluation: a checkpoint's predictions on a split and every statistic of them: metrics,
intervals, bootstrap, calibration, thresholds and operating points, subgroups, paired
comparisons, ensembles, spread over seeds, external validation. Computing only: cxr.reporting
renders."""
