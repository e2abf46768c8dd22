
/models/a.pt
cpuB$

layers.2.*ÿÿÿÿÿÿÿÿÿ"llama