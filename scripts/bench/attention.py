"""Re-measure the attention table behind `AttentionMode::resolve` (crates/sd-models/src/attention.rs): LibTorch's
fused SDPA kernel vs batched-matmul attention over query chunks of several sizes, at the SD1.5 shapes (batch 2 x 8
heads), bf16 and f32. Prints milliseconds per call (median of 3) and each path's max error vs an f32 SDPA reference.

usage: python attention.py
"""
import torch, time, statistics, sys
import torch.nn.functional as F
torch.manual_seed(0)
def mm(q,k,v,chunk):
    B,H,L,D=q.shape; s=D**-0.5
    qf=q.reshape(B*H,L,D); kt=k.reshape(B*H,-1,D).transpose(1,2); vf=v.reshape(B*H,-1,v.shape[-1])
    out=torch.empty(B*H,L,v.shape[-1],dtype=q.dtype)
    for st in range(0,L,chunk):
        sc=torch.baddbmm(torch.empty(1,1,1,dtype=q.dtype), qf[:,st:st+chunk], kt, beta=0, alpha=s)
        sc=sc.softmax(-1)
        torch.bmm(sc, vf, out=out[:,st:st+chunk]) if False else out[:,st:st+chunk].copy_(torch.bmm(sc,vf))
    return out.reshape(B,H,L,-1)
def t(f,n=3):
    f(); ts=[]
    for _ in range(n):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    return statistics.median(ts)
for dt in [torch.bfloat16, torch.float32]:
  for (L,D,Lk) in [(4096,40,4096),(4096,40,77),(1024,80,1024),(1024,80,77),(256,160,256),(1024,40,1024)]:
    q=torch.randn(2,8,L,D,dtype=dt);k=torch.randn(2,8,Lk,D,dtype=dt);v=torch.randn(2,8,Lk,D,dtype=dt)
    with torch.inference_mode():
        r={'sdpa':t(lambda:F.scaled_dot_product_attention(q,k,v))}
        for c in [64,256,1024,4096]:
            if c<=L: r[f'mm{c}']=t(lambda:mm(q,k,v,c))
    ref=F.scaled_dot_product_attention(q.float(),k.float(),v.float())
    err=(mm(q,k,v,256).float()-ref).abs().max().item(); err2=(F.scaled_dot_product_attention(q,k,v).float()-ref).abs().max().item()
    print(dt,L,D,Lk,{a:round(b*1000,1) for a,b in r.items()},'err mm',round(err,4),'sdpa',round(err2,4),flush=True)
