"""DETR (Carion et al., ECCV 2020): set prediction with a transformer and Hungarian matching.

**Model.** A ResNet trunk (C5, stride 32; ``backbone.body``), a 1x1 projection to
``d_model``, a sine positional encoding of the unpadded area (DETR's
``PositionEmbeddingSine``: normalised, scale 2 pi, temperature 10000), an encoder-decoder
of torch.nn transformer layers (``nn.TransformerEncoderLayer`` / ``DecoderLayer``,
post-norm, ReLU; each layer's forward adds the positional encodings to its queries and
keys, as DETR does at every layer rather than once at the input), ``num_queries`` learned
query embeddings with a zero target, a shared LayerNorm on every decoder layer's output,
a linear class head (C + 1 outputs, the last = "no object") and a 3-layer MLP predicting
(cx, cy, w, h) / image size through a sigmoid. Defaults are the paper's: 6 + 6 layers,
d = 256, 8 heads, FFN 2048, dropout 0.1, 100 queries.

**Matching** (:class:`HungarianMatcher`): per image, ``scipy.optimize.linear_sum_assignment``
on C = cost_class * (-p(class)) + cost_bbox * L1(cxcywh, normalised) + cost_giou * (-GIoU)
(1, 5, 2), for the last decoder layer and, with ``aux_loss``, for every other layer; one
device-to-host copy of all the layers' cost matrices per iteration.

**Stock loss** per decoder layer, summed over layers: cross-entropy over all queries with
the no-object class weighted ``eos_coef`` (0.1) (weighted mean) x ``loss_ce`` (1);
L1 of the matched normalised boxes / #gt x ``loss_bbox`` (5); GIoU loss of the matched
boxes / #gt x ``loss_giou`` (2). #gt = the batch's gt boxes (averaged over DDP ranks).

**DETR\\*** (``loss=<name>``): the configured loss replaces the GIoU term, with the
``weight`` it is configured with instead of ``loss_giou``; L1 x ``loss_bbox`` stays
(``model.bbr_replaces=giou``, the default and the presets' choice: Focal-EIoU is an
IoU-family loss and DETR's L1 is on normalised boxes), or goes too
(``model.bbr_replaces=giou_l1``, the other reading of Table 3's caption "instead of their
original losses"). The matcher's L1 cost stays in both readings. IoU-family losses get xyxy
boxes in pixels of the resized image (their centre-distance terms are not invariant to
DETR's per-axis normalisation); l_n losses get the normalised (cx, cy, w, h) that DETR's
L1 uses. Normaliser 1 / #gt; Focal-EIoU: Eq. 11 over each layer's matched pairs. With
``loss_in_matching`` the configured loss (times ``weight``) also replaces the GIoU matching
cost (default false, the paper's wording: only the loss changes).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss

from bbrctl import extras
from bbrctl.detection.models.assembled import AssembledDetector

# What a configured loss replaces in DETR* (model.bbr_replaces): "giou" the GIoU term only,
# L1 x loss_bbox kept (the default); "giou_l1" both box terms.
REPLACES = ("giou", "giou_l1")


def stock_box_weight(m) -> float:
    """DETR's own weight for the term a configured loss takes over: ``loss_giou`` (2), in
    both readings (the L1 term's 5 is on normalised boxes, not on the IoU loss's scale)."""
    return float(m.get("loss_giou", 2.0))


# --------------------------------------------------------------------------- transformer


def sine_position_encoding(pad_mask: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine encoding, (B, 2 * num_feats, H, W); ``pad_mask`` True on padding."""
    not_mask = (~pad_mask).to(torch.float32)
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    i = torch.arange(num_feats, dtype=torch.float32, device=pad_mask.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class EncoderLayer(nn.TransformerEncoderLayer):
    """torch.nn's post-norm encoder layer; positional encodings added to queries and keys."""

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:  # type: ignore[override]
        q = k = src + pos
        x = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(x))
        x = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(x))


class DecoderLayer(nn.TransformerDecoderLayer):
    """torch.nn's post-norm decoder layer; query positions added to the self-attention's
    queries/keys and the cross-attention's queries, image positions to its keys."""

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor,  # type: ignore[override]
                memory_key_padding_mask: Tensor) -> Tensor:
        q = k = tgt + query_pos
        x = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(x))
        x = self.multihead_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=memory_key_padding_mask,
                                need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(x))
        x = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(x))


class Transformer(nn.Module):
    """DETR's encoder-decoder; returns every decoder layer's normalised output (L, B, Q, d)."""

    def __init__(self, d_model: int, nhead: int, enc_layers: int, dec_layers: int, dim_feedforward: int,
                 dropout: float):
        super().__init__()
        kw = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, batch_first=True)
        self.encoder = nn.ModuleList(EncoderLayer(**kw) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(**kw) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, pad: Tensor, query: Tensor, pos: Tensor) -> Tensor:
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, pad)
        query_pos = query[None].expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        out = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, pad)
            out.append(self.decoder_norm(tgt))
        return torch.stack(out)


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int, layers: int):
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dim if i == 0 else hidden, out if i == layers - 1 else hidden))
            if i < layers - 1:
                mods.append(nn.ReLU(inplace=True))
        super().__init__(*mods)


class _Trunk(nn.Module):
    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.body = IntermediateLayerGetter(resnet, {"layer4": "0"})

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)["0"]


# --------------------------------------------------------------------------- matching


def _xyxy(b: Tensor) -> Tensor:
    return box_convert(b, "cxcywh", "xyxy")


class HungarianMatcher:
    """One-to-one matching of queries to gt boxes (see the module docstring).

    ``__call__`` returns, per decoder layer, ``(image, query, target)`` index tensors on
    the predictions' device; ``target`` indexes the batch's concatenated gt boxes.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost(self, logits: Tensor, boxes: Tensor, labels: Tensor, tboxes: Tensor, box_cost=None) -> Tensor:
        """(L, B*Q, G) cost of every query against every gt of the batch."""
        prob = logits.flatten(1, 2).float().softmax(-1)                      # (L, BQ, C+1)
        out = boxes.flatten(1, 2).float()                                    # (L, BQ, 4)
        c = -prob[..., labels] * self.cost_class
        c = c + torch.cdist(out, tboxes[None].expand(out.shape[0], -1, -1), p=1) * self.cost_bbox
        if box_cost is None:
            giou = generalized_box_iou(_xyxy(out.flatten(0, 1)), _xyxy(tboxes)).view(*out.shape[:2], -1)
            c = c - giou * self.cost_giou
        else:
            c = c + box_cost(out)
        return c

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, labels: Tensor, tboxes: Tensor, sizes: list[int],
                 box_cost=None) -> list[tuple[Tensor, Tensor, Tensor]]:
        extras.require("scipy", "model=detr")  # lazily: only DETR needs scipy (bbrctl[detr])
        from scipy.optimize import linear_sum_assignment

        n_layers, b, q = logits.shape[:3]
        dev = logits.device
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=dev)
            return [(empty, empty, empty)] * n_layers
        cost = self.cost(logits, boxes, labels, tboxes, box_cost).view(n_layers, b, q, -1).cpu()
        if not torch.isfinite(cost).all():
            raise FloatingPointError("DETR's matching cost became non-finite (the predictions are NaN or inf); "
                                     "lower schedule.base_lr or set schedule.clip_grad_norm")
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        rows, counts = [], []
        for layer in range(n_layers):
            n = 0
            for i in range(b):
                if not sizes[i]:
                    continue
                r, c = linear_sum_assignment(cost[layer, i, :, offsets[i]:offsets[i + 1]].numpy())
                r, c = torch.as_tensor(r, dtype=torch.int64), torch.as_tensor(c, dtype=torch.int64)
                rows.append(torch.stack([torch.full_like(r, i), r, c + offsets[i]], 1))
                n += len(r)
            counts.append(n)
        idx = torch.cat(rows).to(dev)                                          # one host-to-device copy
        return [(t[:, 0], t[:, 1], t[:, 2]) for t in idx.split(counts)]


# --------------------------------------------------------------------------- the detector


class DETR(AssembledDetector):
    """DETR with its stock set loss and the configured-loss swap (module docstring)."""

    def __init__(self, trunk: nn.Module, trunk_channels: int, num_classes: int, *, d_model: int = 256,
                 nhead: int = 8, enc_layers: int = 6, dec_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1, num_queries: int = 100, aux_loss: bool = True, eos_coef: float = 0.1,
                 costs=(1.0, 5.0, 2.0), weights=(1.0, 5.0, 2.0), loss_in_matching: bool = False,
                 replaces: str = "giou",
                 min_size: int = 800, max_size: int = 1333):
        super().__init__(min_size=min_size, max_size=max_size)
        self.num_classes = num_classes
        self.backbone = _Trunk(trunk)
        self.input_proj = nn.Conv2d(trunk_channels, d_model, 1)
        self.transformer = Transformer(d_model, nhead, enc_layers, dec_layers, dim_feedforward, dropout)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.matcher = HungarianMatcher(*costs)
        self.aux_loss = aux_loss
        self.w_ce, self.w_bbox, self.w_giou = weights
        self.loss_in_matching = loss_in_matching
        if replaces not in REPLACES:
            raise ValueError(f"replaces={replaces!r}; valid: {', '.join(REPLACES)}")
        self.replaces = replaces
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def prediction_heads(self) -> list[nn.Module]:
        return [self.class_embed, self.bbox_embed]

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None):
        original_sizes, images, targets = self._transform_input(images, targets)
        x = images.tensors
        pad = torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=torch.bool, device=x.device)
        for i, (h, w) in enumerate(images.image_sizes):
            pad[i, :h, :w] = False
        feat = self.backbone(x)
        pad = F.interpolate(pad[None].float(), size=feat.shape[-2:])[0].bool()
        pos = sine_position_encoding(pad, self.input_proj.out_channels // 2).to(feat.dtype)
        src = self.input_proj(feat).flatten(2).transpose(1, 2)
        hs = self.transformer(src, pad.flatten(1), self.query_embed.weight, pos.flatten(2).transpose(1, 2))
        if not self.aux_loss or not self.training:
            hs = hs[-1:]
        logits = self.class_embed(hs)                                         # (L, B, Q, C+1)
        boxes = self.bbox_embed(hs).sigmoid()                                 # (L, B, Q, 4) cxcywh / size
        if self.training:
            return self.compute_loss(logits.float(), boxes.float(), targets, images.image_sizes)
        dets = self.postprocess(logits[-1].float(), boxes[-1].float(), images.image_sizes)
        return self.transform.postprocess(dets, images.image_sizes, original_sizes)

    @staticmethod
    def _scales(image_sizes, device) -> Tensor:
        return torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=torch.float32, device=device)

    def compute_loss(self, logits: Tensor, boxes: Tensor, targets, image_sizes) -> dict[str, Tensor]:
        dev = logits.device
        scales = self._scales(image_sizes, dev)                               # (B, 4)
        sizes = [int(t["boxes"].shape[0]) for t in targets]
        labels = torch.cat([t["labels"] for t in targets]) - 1 if sum(sizes) else \
            torch.zeros(0, dtype=torch.int64, device=dev)
        img_of_gt = torch.repeat_interleave(torch.arange(len(targets), device=dev),
                                            torch.tensor(sizes, device=dev))
        gt_px = torch.cat([t["boxes"] for t in targets]).float() if sum(sizes) else boxes.new_zeros(0, 4)
        gt = box_convert(gt_px, "xyxy", "cxcywh") / scales[img_of_gt]        # normalised cxcywh
        num_gt = self._num_gt(sum(sizes), dev)

        box_cost = None
        if self.bbr is not None and self.loss_in_matching:
            box_cost = self._pair_cost_fn(gt, img_of_gt, scales, boxes.shape[2])
        matches = self.matcher(logits, boxes, labels, gt, sizes, box_cost)

        n_layers, b, q, _ = logits.shape
        ce = logits.new_zeros(())
        l1 = logits.new_zeros(())
        reg = logits.new_zeros(())
        for layer, (bi, qi, ti) in enumerate(matches):
            target_cls = torch.full((b, q), self.num_classes, dtype=torch.int64, device=dev)
            target_cls[bi, qi] = labels[ti]
            per = F.cross_entropy(logits[layer].transpose(1, 2), target_cls, reduction="none")
            w = self.class_weight[target_cls]
            ce = ce + (per * w).sum() / w.sum()
            pred = boxes[layer, bi, qi]
            if self.bbr is None or self.replaces == "giou":
                l1 = l1 + (pred - gt[ti]).abs().sum() / num_gt
            reg = reg + self._box_term(pred, gt[ti], scales[bi], num_gt, bi)
        return {"classification": ce * self.w_ce, "bbox_l1": l1 * self.w_bbox, "bbox_regression": reg}

    def _num_gt(self, n: int, dev) -> Tensor | float:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor(float(n), device=dev)
            torch.distributed.all_reduce(t)
            return (t / torch.distributed.get_world_size()).clamp(min=1.0)
        return float(max(n, 1))

    def _box_term(self, pred: Tensor, gt: Tensor, scale: Tensor, num_gt, image_idx=None) -> Tensor:
        """The GIoU term (stock) or the configured loss of one layer's matched pairs."""
        if self.bbr is None:
            return generalized_box_iou_loss(_xyxy(pred), _xyxy(gt), reduction="sum") / num_gt * \
                (self.w_giou * self.stock_weight)
        if self.bbr.space == "boxes":
            return self.bbr(_xyxy(pred) * scale, _xyxy(gt) * scale, 1.0 / num_gt, image_idx=image_idx)
        return self.bbr(pred, gt, 1.0 / num_gt, image_idx=image_idx)

    def _pair_cost_fn(self, gt: Tensor, img_of_gt: Tensor, scales: Tensor, q: int):
        """Matching cost of the configured loss: weight x per-pair loss (L, B*Q, G).

        Pairs are scaled to pixels with the query's image size; pairs across images get
        a value too, which the per-image assignment never reads.
        """
        bbr = self.bbr

        def cost(out: Tensor) -> Tensor:
            n_layers, bq, _ = out.shape
            g = gt.shape[0]
            p = out[:, :, None, :].expand(n_layers, bq, g, 4).reshape(-1, 4)
            t = gt[None, None].expand(n_layers, bq, g, 4).reshape(-1, 4)
            if bbr.space == "boxes":
                s = scales.repeat_interleave(q, 0)[None, :, None, :].expand(n_layers, bq, g, 4).reshape(-1, 4)
                p, t = _xyxy(p) * s, _xyxy(t) * s
            return bbr.weight * bbr.fn(p, t, reduction="none").view(n_layers, bq, g)

        return cost

    def postprocess(self, logits: Tensor, boxes: Tensor, image_sizes) -> list[dict[str, Tensor]]:
        prob = logits.softmax(-1)[..., :-1]
        scores, labels = prob.max(-1)
        px = _xyxy(boxes) * self._scales(image_sizes, boxes.device)[:, None, :]
        return [{"boxes": px[i], "scores": scores[i], "labels": labels[i] + 1} for i in range(len(image_sizes))]
