
/models/a.pt
meta*layers.1*layers.1*layers.4.bias