"""Post-processing: probability volumes → scored picks (:mod:`czii.postprocess.peaks`), and per-class
thresholds tuned on out-of-fold candidates (:mod:`czii.postprocess.thresholds`)."""
