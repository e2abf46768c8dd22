
/models/a.pt
cuda:0B#
layers.*.weight

*.bias