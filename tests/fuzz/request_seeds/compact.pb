
/models/m.pt
cpu*layers.0*layers.1.weightH