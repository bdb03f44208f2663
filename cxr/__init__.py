"""The library beneath the scripts, grouped by stage (docs/architecture.md draws the layers):

    cxr.reporting    tables, figures and documents of every report (rendering only)
    cxr.scoring      score.py: predictions CSVs against a reference standard, readers, labelers
    cxr.inference    a checkpoint on new films: files, studies, calibrated probabilities, Grad-CAM
    cxr.evaluation   a split's predictions and their statistics: metrics, intervals, calibration,
                     thresholds, subgroups, comparisons, ensembles, seeds, external validation
    cxr.training     what a run runs on and leaves behind: device, DDP, randomness, stop signals,
                     the checkpoint format, resume, schedule, EMA, run folder, TensorBoard
    cxr.data         labels and the reference standard, each dataset's layout, splits, images,
                     augmentation, the image cache, loaders
    cxr.cli, cxr.settings, cxr.atomic, cxr.errors   the command line, each config field's
                     declared facts and the tables derived from them, atomic writes, the
                     errors a user can fix

A module imports only modules of its own subpackage or of those listed below it; none imports a
script or the design card (config.py, dataset.py, model_architecture.py): tests/test_layout.py.
"""
