
/models/a.pt
cuda:1"bfloat16B
*ÿÿÿÿÿÿÿÿÿ