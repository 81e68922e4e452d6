"""The loss of one cross-sensor pretraining step (paper Eq. 1 / 2): ``CrossSensorObjective``.

For every image of the step's sub-batches, the shared encoder sees the masked image of sensor i through its own
patch embedding (``XGeo.encode``: one encoder pass for the whole heterogeneous step); the decoder D_i reconstructs
it, or, for a co-located pair and where the step's cross choice is set, D_j reconstructs the partner's image.
Reconstruction: SimMIM's masked L1 (``XGeo.forward_loss``); plus the model's MoE auxiliary loss, once per step.

Per-group learning rate (Table 11: lr proportional to the group's batch size, 1e-4 / 0.25e-4 / 1e-5 for
128 / 32 / 12): applied by weighting group g's loss by ``B_g / B_first`` before ONE AdamW step at ``base_lr``.
AdamW normalises the summed gradient, so the weights set each group's share of the gradient, which is the
closest a single optimizer gets to one learning rate per group; with mean losses per group it also makes every
sample of every group count equally (each weighs 1 / B_first).
"""
from __future__ import annotations

import torch
from torch import nn

from .data import GroupLayout


def group_weights(batch_sizes: dict[str, int]) -> dict[str, float]:
    """Loss weight of each group: B_g / B_first (the first group in params order is the lr reference)."""
    first = next(iter(batch_sizes.values()))
    return {g: b / first for g, b in batch_sizes.items()}


class CrossSensorObjective(nn.Module):
    """The loss of one heterogeneous step; a module so that DDP sees the whole step as one forward.

    forward(batch) -> (loss (), logs {name: () tensor}). ``weights[g]`` = B_g / B_first (see the module docstring).
    """

    def __init__(self, model: nn.Module, layouts: dict[str, GroupLayout], weights: dict[str, float]) -> None:
        super().__init__()
        self.model = model
        self.layouts = layouts
        self.weights = weights

    def entries(self, batch: dict) -> list[tuple[str, str]]:
        """(group, modality key) of every image set of the step, in a fixed order."""
        return [(g, k) for g in batch for k in self.layouts[g].sensors]

    def encode(self, batch: dict, entries: list[tuple[str, str]], **kw):
        """``XGeo.encode`` of the step's masked images: one encoder pass for every sensor of every group."""
        return self.model.encode([(self.layouts[g].sensors[k], batch[g]["images"][k], batch[g]["masks"][k])
                                  for g, k in entries], **kw)

    def targets(self, z: torch.Tensor, key: str, layout: GroupLayout, gb: dict) -> list[tuple]:
        """What the encoding z (B, C_m, h, w) of modality ``key`` of a group batch is decoded to:
        [(target sensor, z part, target image, mask, share of the batch)].

        Unpaired data reconstructs itself (Eq. 2). For a co-located pair (Eq. 1), the samples whose cross choice
        is set are decoded by the partner's decoder D_j against the partner's image; the two parts are weighted
        by their share of the batch, so the loss is the per-sample mean.
        """
        x, mask = gb["images"][key], gb["masks"][key]
        if key not in layout.partner:
            return [(layout.sensors[key], z, x, mask, 1.0)]
        cross = gb["cross"][key]
        n = x.shape[0]
        parts = []
        for sel, tkey in ((~cross, key), (cross, layout.partner[key])):
            m = int(sel.sum())
            if m:
                parts.append((layout.sensors[tkey], z[sel], gb["images"][tkey][sel], mask[sel], m / n))
        return parts

    def reconstruction_losses(self, jobs: list[list[tuple]]) -> list[torch.Tensor]:
        """SimMIM L1 (masked pixels, normalised by the target's channels) of every entry's ``targets``.

        One decoder call per target sensor for the whole step: the parts of every entry that a sensor's decoder
        reconstructs are concatenated, decoded together, and split again for their losses (the decoders' weights
        are large, 32^2 C_j x C_m; one product and one weight gradient each instead of one per part).
        """
        by_sensor: dict[str, list[tuple[int, tuple]]] = {}
        for i, parts in enumerate(jobs):
            for part in parts:
                by_sensor.setdefault(part[0], []).append((i, part))
        losses: list = [0.0] * len(jobs)
        for sensor, items in by_sensor.items():
            zs = [part[1] for _, part in items]
            pred = self.model.forward_decoder(torch.cat(zs) if len(zs) > 1 else zs[0], sensor)
            for (i, (_, _, target, mask, share)), p in zip(items, pred.split([z.shape[0] for z in zs])):
                # fp32 even under bf16 autocast
                losses[i] = losses[i] + self.model.forward_loss(target.float(), p.float(), mask) * share
        return losses

    def combine(self, batch: dict, entries: list[tuple[str, str]], losses: list[torch.Tensor], aux: torch.Tensor,
                logs: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sum_g w_g * mean over g's modalities of the per-entry losses, + aux ONCE (not weighted by a group).

        Logs: the unweighted loss of each group and each sensor (sample-weighted), rec_loss (mean over entries),
        aux_loss, and each MoE block's expert load share.
        """
        logs = dict(logs or {})
        sums: dict[str, list] = {}  # sensor -> [sum of loss * n, n]
        group_loss: dict[str, torch.Tensor] = {}
        for (gname, key), loss in zip(entries, losses):
            layout, n = self.layouts[gname], batch[gname]["count"]
            s = sums.setdefault(layout.sensors[key], [0.0, 0])
            s[0] = s[0] + loss.detach() * n
            s[1] += n
            # a group's loss: the mean over its modalities (each image of a pair counts once)
            group_loss[gname] = group_loss.get(gname, 0.0) + loss / len(layout.sensors)
        total = aux
        for gname, loss in group_loss.items():
            logs[f"loss/group/{gname}"] = loss.detach()
            total = total + self.weights[gname] * loss
        for sensor, (acc, n) in sums.items():
            logs[f"loss/{sensor}"] = acc / n
        logs.setdefault("rec_loss", torch.stack([torch.as_tensor(v).detach().float() for v in losses]).mean())
        logs["aux_loss"] = torch.as_tensor(aux).detach()
        for i, layer in enumerate(self.model.moe_layers()):
            load = (getattr(layer, "last_stats", None) or {}).get("load")
            if load is not None:
                load = torch.as_tensor(load).detach().float()
                logs[f"moe/{i}/load"] = load / load.sum().clamp_min(1e-12)
        return total, logs

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        entries = self.entries(batch)
        zs, aux = self.encode(batch, entries)
        recs = self.reconstruction_losses([self.targets(z, k, self.layouts[g], batch[g])
                                           for (g, k), z in zip(entries, zs)])
        return self.combine(batch, entries, recs, aux)
