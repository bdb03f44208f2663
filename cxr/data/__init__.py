"""Data: labels and the reference standard, each dataset's layout (CheXpert, NIH, MIMIC-CXR,
PadChest), patient-level splits, decoding radiographs, augmentation, the image cache, loaders."""
