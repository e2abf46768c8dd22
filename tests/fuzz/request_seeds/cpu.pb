
/models/a.pt
cpu