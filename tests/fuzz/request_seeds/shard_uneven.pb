
/models/a.pt
cuda:0B
*