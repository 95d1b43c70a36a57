"""
Tiny eCLIP: contrastive image–phrase pretraining with expert heatmaps.

EDITABLE: this is the file the agent changes. prepare.py (data + evaluation) is fixed.
A small ViT and a small DistilBERT, both randomly initialised, are projected into a
shared space and trained with the symmetric InfoNCE loss of CLIP and a learnable
temperature; an auxiliary head learns to predict the expert heatmap from the ViT's
patch tokens. Like autoresearch's train.py it trains for a wall-clock budget: until
$FARM_BUDGET_S (set by farm for every trial; short screens set it shorter) less the time
its evaluation takes, measured before training, and a margin; then it evaluates and prints
a summary block. More steps come only from faster steps, and the result depends on load.
"""

import time

T_START = time.time()  # before the slow imports: the budget counts from the process start

import itertools
import math
import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from prepare import IMG_SIZE, MAX_LEN, PAD_ID, VOCAB, evaluate_mean_rank, load_data
from timm.models.vision_transformer import VisionTransformer
from transformers import DistilBertConfig, DistilBertModel

# ---------------------------------------------------------------------------
# Hyperparameters

LEARNING_RATE = 3e-3  # AdamW peak LR
WEIGHT_DECAY = 0.05  # AdamW weight decay on matrices (not on norms, biases or the temperature)
BATCH_SIZE = 64  # image-phrase pairs per step; the rest of the batch are the negatives
WARMUP_FRAC = 0.2  # share of the training time spent on linear LR warmup, then cosine decay
EMBED_DIM = 64  # width of both encoders and of the shared embedding
VIT_DEPTH = 4  # transformer blocks in the image encoder
HEATMAP_WEIGHT = 1.0  # weight of the auxiliary heatmap loss
LOGIT_SCALE_MAX = 0.5  # clamp on the learnable log-temperature

# ---------------------------------------------------------------------------
# Setup

# Wall-clock budget of the whole process; a trial still running at it is killed (TIMEOUT).
budget_s = float(os.environ.get("FARM_BUDGET_S", "90"))  # farm.toml budget_s
seed = int(os.environ.get("FARM_SEED", "0"))
random.seed(seed)
np.random.seed(seed)
torch.manual_seed(seed)
torch.set_num_threads(int(os.environ.get("FARM_THREADS", "1")))

t_data = time.time()
train_data, _ = load_data()
t_data = time.time() - t_data


class ECLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = VisionTransformer(
            img_size=IMG_SIZE,
            patch_size=8,
            embed_dim=EMBED_DIM,
            depth=VIT_DEPTH,
            num_heads=4,
            mlp_ratio=2.0,
            num_classes=0,
            # Mean-pool patches, no class token: trained from scratch for a few hundred
            # steps, class-token pooling sat at chance loss for a seed-dependent while.
            class_token=False,
            global_pool="avg",
        )
        self.text = DistilBertModel(
            DistilBertConfig(
                vocab_size=len(VOCAB),
                dim=EMBED_DIM,
                n_layers=2,
                n_heads=4,
                hidden_dim=2 * EMBED_DIM,
                max_position_embeddings=MAX_LEN,
                pad_token_id=PAD_ID,
            )
        )
        self.image_proj = nn.Linear(EMBED_DIM, EMBED_DIM, bias=False)
        self.text_proj = nn.Linear(EMBED_DIM, EMBED_DIM, bias=False)
        self.heatmap_head = nn.Linear(EMBED_DIM, 1)  # per patch: how much expert attention it gets
        # Learnable log-temperature, CLIP's initial value: logits = exp(logit_scale) * cosine.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_features(self, images):
        tokens = self.visual.forward_features(images)  # (B, patches, D)
        return self.image_proj(self.visual.forward_head(tokens)), tokens

    def encode_image(self, images):
        return self.image_features(images)[0]

    def encode_text(self, tokens):
        mask = (tokens != PAD_ID).unsqueeze(-1).float()
        hidden = self.text(input_ids=tokens, attention_mask=mask.squeeze(-1)).last_hidden_state
        return self.text_proj((hidden * mask).sum(1) / mask.sum(1))  # mean, for the same reason


model = ECLIP()
num_params = sum(p.numel() for p in model.parameters())
decay = [p for p in model.parameters() if p.ndim >= 2]
no_decay = [p for p in model.parameters() if p.ndim < 2]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LEARNING_RATE,
    betas=(0.9, 0.98),
)


def lr_at(progress):
    """LR at `progress`, the share of the training time spent (0 to 1)."""
    if progress < WARMUP_FRAC:
        return LEARNING_RATE * max(progress / WARMUP_FRAC, 1e-3)
    rest = (progress - WARMUP_FRAC) / max(1e-9, 1 - WARMUP_FRAC)
    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * min(1.0, rest)))


def batches():
    """Shuffled epochs, so a batch never holds the same pair twice (a false negative)."""
    n = len(train_data.tokens)
    while True:
        perm = torch.randperm(n)
        for i in range(0, n - BATCH_SIZE + 1, BATCH_SIZE):
            yield perm[i : i + BATCH_SIZE]


# Expert heatmaps pooled to the ViT's patch grid: the auxiliary target per patch token.
grid = model.visual.patch_embed.grid_size
patch_heat = F.adaptive_avg_pool2d(train_data.heatmaps[:, None], grid).flatten(1)

# ---------------------------------------------------------------------------
# Training

# The evaluation, timed once on the untrained model (it costs the same trained): training
# stops early enough to leave twice that plus a margin, as load can change meanwhile.
t_eval = time.time()
evaluate_mean_rank(model)
eval_seconds = time.time() - t_eval
reserve_s = 2 * eval_seconds + max(3.0, 0.1 * budget_s)

model.train()
t_train = time.time()
train_s = max(0.0, T_START + budget_s - reserve_s - t_train)
batch_iter = batches()
for step in itertools.count():
    if time.time() - t_train >= train_s:
        break
    idx = next(batch_iter)
    for group in optimizer.param_groups:
        group["lr"] = lr_at((time.time() - t_train) / train_s)

    img_emb, patches = model.image_features(train_data.images[idx])
    txt_emb = model.encode_text(train_data.tokens[idx])
    logits = model.logit_scale.exp() * F.normalize(img_emb, dim=-1) @ F.normalize(txt_emb, dim=-1).T
    labels = torch.arange(len(idx))
    contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    heat_loss = F.mse_loss(model.heatmap_head(patches).squeeze(-1), patch_heat[idx])
    loss = contrastive + HEATMAP_WEIGHT * heat_loss

    if not math.isfinite(loss.item()):
        print(f"FAIL: loss is {loss.item()} at step {step}")
        sys.exit(1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
    if step % 50 == 0:
        print(
            f"step {step:4d} | loss {loss.item():.4f} | heat {heat_loss.item():.4f} | "
            f"logit_scale {model.logit_scale.item():.3f} | {time.time() - t_train:.1f}s",
            flush=True,
        )

training_seconds = time.time() - t_train
mean_rank = evaluate_mean_rank(model)

print("---")
print(f"mean_rank:        {mean_rank:.6f}")
print(f"train_loss:       {contrastive.item():.4f}" if step else "train_loss:       nan")
print(f"logit_scale:      {model.logit_scale.item():.3f}")
print(f"data_seconds:     {t_data:.1f}")
print(f"eval_seconds:     {eval_seconds:.1f}")
print(f"training_seconds: {training_seconds:.1f}")
print(f"total_seconds:    {time.time() - T_START:.1f}")
print(f"budget_seconds:   {budget_s:g}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.2f}")
# Skip the interpreter's teardown of torch and transformers: seconds under load, and the
# budget counts until the process ends.
sys.stdout.flush()
os._exit(0)
