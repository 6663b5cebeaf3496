"""The SNOW paper's own numbers (ResNet-50 source, 224 px, batch 256, Tesla V100s), for reference beside
ours. Not comparable in absolute terms: other hardware, source, datasets, image size and epochs.
"""

from __future__ import annotations

PAPER_DATASETS = ("Food", "DTD", "Action", "Cars", "CUB")

# Table 6: top-1 (top-5) test accuracy, %.
TABLE6_ACCURACY = {
    "FO": ((70.76, 90.55), (70.81, 91.65), (76.41, 95.58), (51.96, 78.68), (65.96, 89.90)),
    "FE": ((82.24, 95.84), (71.45, 92.40), (73.97, 93.64), (74.05, 94.12), (67.16, 91.27)),
    "FT": ((87.31, 97.24), (58.69, 83.79), (72.65, 91.45), (90.20, 98.82), (77.25, 93.53)),
    "MP": ((82.02, 95.74), (72.20, 92.50), (81.65, 96.46), (81.23, 96.02), (77.17, 94.11)),
    "PN": ((86.49, 97.04), (74.27, 92.29), (80.50, 95.52), (86.44, 97.51), (75.72, 93.15)),
    "SNOW": ((84.24, 96.42), (71.93, 91.49), (78.34, 94.88), (83.71, 96.89), (75.34, 94.24)),
}

# Table 7: training throughput (images/s/GPU) and GPU memory (GB).
TABLE7_TRAINING = {
    "FO": ((1076.08, 4.2), (1089.83, 4.5), (1106.31, 4.5), (1085.67, 4.3), (1102.50, 4.7)),
    "FE": ((1205.84, 4.1), (1205.84, 4.4), (1230.77, 4.1), (1209.26, 4.3), (1219.62, 4.4)),
    "FT": ((328.96, 28.2), (333.51, 28.4), (335.16, 28.2), (331.09, 28.3), (335.61, 28.3)),
    "MP": ((293.75, 40.4), (299.00, 39.9), (305.20, 40.4), (289.89, 40.3), (304.33, 40.4)),
    "PN": ((148.66, 43.5), (151.89, 44.0), (154.40, 43.9), (149.71, 43.7), (153.31, 43.7)),
    "SNOW": ((947.80, 4.5), (959.16, 4.5), (949.55, 4.4), (965.31, 4.4), (970.06, 4.4)),
}

# Table 4: serving ImageNet + the five tasks on one V100: total parameters (M), images/s.
TABLE4_SERVING = {
    "FO": (26.8, 7060.8), "FE": (28.3, 5626.6), "FT": (144.3, 632.9),
    "MP": (26.9, 304.3), "PN": (257.4, 169.5), "SNOW": (30.8, 4731.0),
}

# Table 5: subscription method: parameter overhead (M), top-1 % on Food, DTD, Action, Car, CUB.
TABLE5_SUBSCRIPTION = {
    "conv1x1": (14.0, (82.82, 74.73, 78.29, 77.07, 73.20)),
    "attention": (35.0, (84.05, 74.06, 79.50, 82.94, 75.51)),
    "all": (17.5, (82.80, 73.78, 78.85, 76.47, 72.80)),
    "channel_pooling": (5.5, (84.24, 71.93, 78.34, 83.71, 75.34)),
}


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def paper_ratios() -> dict:
    """The paper's headline ratios, averaged over its five datasets (Tables 4, 6, 7)."""
    t7, t6 = TABLE7_TRAINING, TABLE6_ACCURACY
    return {
        "snow_over_ft_train_images_per_s": mean(s[0] / f[0] for s, f in zip(t7["SNOW"], t7["FT"])),
        "ft_over_snow_memory": mean(f[1] / s[1] for s, f in zip(t7["SNOW"], t7["FT"])),
        "snow_over_ft_serving_images_per_s": TABLE4_SERVING["SNOW"][1] / TABLE4_SERVING["FT"][1],
        "snow_minus_fe_top1": mean(s[0] - f[0] for s, f in zip(t6["SNOW"], t6["FE"])),
        "snow_minus_ft_top1": mean(s[0] - f[0] for s, f in zip(t6["SNOW"], t6["FT"])),
    }
