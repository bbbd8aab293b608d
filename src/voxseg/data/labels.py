"""The single internal ignore sentinel.

Datasets may declare any integer as their ignore label (nnU-Net requires max label + 1; some teams
use -1 or 255). Reading maps that value to IGNORE so no later stage needs to know the raw value.
"""

IGNORE = -1
