
/models/a.pt
cpu*layers.1*layers.4.bias8B

layers.1?*