
/models/a.pt/
cudacuda:01

mpscpu
cuda:7cuda:0