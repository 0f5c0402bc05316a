"""Which validation images the Torch <-> ONNX comparison looks at, and why.

Every mode is stratified, seeded and reproducible (same config + same files ->
same sample), and the result says how many classes and images it holds and why
that is fewer than asked:

* ``smoke``: ``sample_count`` images, one per class in a shuffled class order,
  then a second round, ... (as many distinct classes as the count allows);
* ``coverage``: ``per_class_k`` per class over at least ``min_classes`` classes
  (when the dataset has them), at most ``max_total`` images; when the three
  settings contradict each other ``max_total`` wins, then ``min_classes``;
* ``full``: every validation image (a list of paths; pixels are decoded batch by
  batch by the caller, so memory stays bounded).

Hardness bins: in smoke and coverage mode a small pool of extra images is scored
by the Torch model (top-1 probability) and ``hard_per_bin`` per bin of
``hardness_bins`` are added, so that cases near the decision boundary are always
compared. ``hardness_candidates`` picks the pool, the caller runs Torch on it
once (and reuses those outputs in the comparison), ``add_hard_cases`` picks.

Detection photos are stratified by their number of labelled pills (0, 1, ...,
``MAX_PILL_STRATUM`` and more), because crowded photos are where NMS and
box-level differences show up.
"""
