
/models/m.pt
cuda:0B:
layers.*.weight
layers.?.biasÿÿÿÿÿÿÿÿÿ
xH