
/m
cuda
cpucuda:1