set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 DEEPBLUR_GIT_COMMIT=f8ce75ac60e347edd0b39f76269603d707a0ab25
nvidia-smi -L
python3 -c "import torch,safetensors,skimage,tifffile,tqdm,scipy;print('torch',torch.__version__,torch.cuda.get_device_name())"
timeout 480 python3 -m napari_deepblur.cli train --out /tmp/zernike-large --arch large --device cuda \
  --batch-size 128 --deblurring-batch-size 32 --identification-steps 1000000 --deblurring-steps 1000000 \
  --identification-minutes 4.5 --deblurring-minutes 2.0 --bank-size 16000 --seed 0 2>&1 | grep -v "it/s\]" | tee $OUT/train.log
cp /tmp/zernike-large/model.safetensors /tmp/zernike-large/model.json $OUT/ 
python3 - <<'PY' 2>&1 | tee $OUT/gpu_speed.log
import time, numpy as np, torch
import napari_deepblur as ndb
m = ndb.load_model('/tmp/zernike-large/model.safetensors', device='cuda')
img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
for aug in (True, False):
    for i in range(6):
        torch.cuda.synchronize(); t = time.perf_counter()
        est = ndb.identify(img, model=m, device='cuda', augment=aug); torch.cuda.synchronize(); t1 = time.perf_counter()
        out = ndb.deblur(img, est, model=m, device='cuda'); torch.cuda.synchronize(); t2 = time.perf_counter()
        print(f'augment={aug} run {i}: identify {t1-t:.4f} s deblur {t2-t1:.4f} s total {t2-t:.4f} s')
PY
