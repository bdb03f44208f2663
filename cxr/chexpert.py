"""CheXpert's own layout: how its CSVs name the images, patients, studies and views."""

from __future__ import annotations

import re

# "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg": the release folder the CSVs
# prefix every path with (the full-resolution release and the small one).
RELEASE_PREFIX = re.compile(r"^CheXpert-v1\.0(-small)?/")
PATIENT_STUDY = re.compile(r"(patient\d+)/(study\d+)/")
VIEW_VALUES = ("Frontal", "Lateral")
