
/models/a.pt/
-cuda:GPU-11111111-1111-1111-1111-111111111111"torch.bfloat16