"""The LightningDataModule: datasets, the neighbor sampler and evenly sharded loaders."""
from __future__ import annotations

import copy
from typing import List, Literal, Optional, get_args

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader

from ..checks import check_choice
from ..distributed import world
from .graph import GatherFeatureStore, GraphDataset
from .input_rule_loading import InputRuleLoading
from .loaders import OneBatch, ResumableNodeLoader, RowsGather, SampleLess, expand_rows
from .prepared import FEATURE_DTYPES, load_prepared
from .samplers import SAMPLERS, Sampler, make_sampler
from .shard import ShardedSeedSampler
from .sources import KNOWN, is_custom, unknown_dataset
from .split import SPLITS, check_split_fractions, named_nodes, random_split
EvalMode = Literal["sampled", "layerwise"]
FeatureDtype = Literal["float32", "float16", "bfloat16"]
FeatureGather = Literal["loader", "device"]
FEATURE_GATHERS = get_args(FeatureGather)
EVAL_MODES = get_args(EvalMode)


def _dist_info(trainer) -> tuple[int, int]:
    if trainer is not None:
        return trainer.world_size, trainer.global_rank
    return world()


class UnifewsDataModule(InputRuleLoading, pl.LightningDataModule):
    """Neighbor-sampled minibatches of one graph, sharded evenly across DDP ranks.

    Args:
        name: dataset (``cora``, ``citeseer``, ``pubmed``, ``ogbn-arxiv``, ``ogbn-products``,
            ``ogbn-papers100m``, ``synthetic-tiny`` / ``-small`` / ``-medium`` / ``-products``), or
            your own graph: a path to a ``torch.save``'d PyG ``Data``, a folder of ``.npy`` arrays
            (see :func:`~unifews_dist.data.datasets.load_custom`) or a prepared folder; ``custom``
            takes that path from ``root``. Every dataset is prepared once into memory-mappable
            arrays (:mod:`~unifews_dist.data.prepared`) that every rank and worker maps: one copy
            per node.
        root: folder holding the datasets (downloaded there when missing and online); default
            ``$UNIFEWS_DATA``, else ``~/.cache/unifews_dist/data`` (``$UNIFEWS_CACHE/data``).
        num_neighbors: training fanout per hop; one hop per model layer.
        eval_num_neighbors: evaluation fanout (``-1`` = every neighbour); defaults to training's.
        batch_size: seed nodes per training batch (per rank).
        eval_batch_size: seed nodes per evaluation batch; defaults to ``batch_size``.
        num_workers, pin_memory, persistent_workers: as :class:`torch.utils.data.DataLoader`.
        sampler: ``auto`` | ``torch`` | ``pyg_lib`` | ``torch_sparse``.
        seed: seeds the shuffling (per epoch) and the sampler.
        feature_dtype: how the prepared features are stored: ``float32``, or ``float16`` /
            ``bfloat16`` (half the memory and the host-to-device bytes; a batch's features are
            made float32 on the device, after the transfer).
        feature_gather: where a batch's features are gathered: ``loader`` (in the loader, with
            its sampling: in the workers with ``num_workers > 0``, and copied to the device with
            the batch) or ``device`` (the loader, its workers too, returns node ids, edges and
            labels only; the features are gathered after the transfer, in
            ``on_after_batch_transfer``, from a copy of the feature matrix on the trainer's
            device, made once per rank; on CPU the mapped matrix itself). ``device`` moves a
            batch's node ids (8 bytes per node) instead of its feature rows (products: 400
            bytes) and overlaps the sampling in the workers with the step.
        gpu_sampling: keep the graph and its features on the trainer's GPU and sample there
            (the built-in sampler runs on CUDA tensors; pyg-lib and torch-sparse sample on CPU
            only). A batch then arrives on the GPU already: no host gather, no host-to-device
            copy. Needs ``num_workers=0`` and a CUDA device per rank.
        random_split: ``null`` keeps the dataset's own split (Planetoid's public one, OGB's);
            ``[train, val]`` fractions draw a class-stratified random split from ``seed``, the rest
            test (``[0.5, 0.25]`` is the Unifews reference code's split of Planetoid graphs).
        eval_mode: how validation and test run: ``sampled`` (minibatches of sampled
            neighbourhoods, ``eval_num_neighbors``) or ``layerwise`` (the whole graph, each layer
            over every node in batches of ``eval_batch_size`` targets with all their kept in-edges:
            :meth:`UnifewsGNN.inference`; under DDP the ranks split every layer but the last and
            all-gather it, each scores its share of the nodes).
        predict_nodes: the nodes ``predict`` writes: ``all``, ``train``, ``val``, ``test``, or a file
            of node ids (``.pt`` holding a tensor, or ``.npy``); always layer-wise.
        prune_before_gather: for a model whose first layer scores its inputs (SAGE: its
            ``input_rule``), training batches apply that layer's edge rule in the loader, from
            every node's feature norm (computed once), and gather, move and compute only the rows
            some layer reads (:class:`~unifews_dist.data.loaders.RowsGather`); exact: the model's
            outputs, gradients and statistics are those of the whole block. Host sampling only.
        sample_less: for such a model, the built-in sampler applies that rule hop by hop while it
            samples a training block (:class:`~unifews_dist.data.loaders.SampleLess`): a node whose
            every out-edge the rule drops is not expanded. An approximation of the method (the
            rule's mean is estimated from the hops so far), at the first layer's threshold of the
            epoch's start. Off by default: within 0.5 points of the exact path on the quick start,
            0.7 below it on a three-layer model (BENCHMARKS.md). With ``sampler`` ``pyg_lib`` /
            ``torch_sparse`` or ``gpu_sampling``, blocks are sampled in full.
    """

    def __init__(self, name: str = "cora", root: Optional[str] = None, num_neighbors: List[int] = [10, 10],
                 eval_num_neighbors: Optional[List[int]] = None, batch_size: int = 512,
                 eval_batch_size: Optional[int] = None, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, sampler: Sampler = "auto", seed: int = 0,
                 gpu_sampling: bool = False, random_split: Optional[List[float]] = None,
                 eval_mode: EvalMode = "sampled", predict_nodes: str = "all",
                 feature_dtype: FeatureDtype = "float32", feature_gather: FeatureGather = "loader",
                 prune_before_gather: bool = True, sample_less: bool = False):
        super().__init__()
        check_choice("eval_mode", eval_mode, EVAL_MODES)
        if predict_nodes not in SPLITS and not str(predict_nodes).endswith((".pt", ".npy")):
            raise ValueError(f"predict_nodes must be one of {', '.join(SPLITS)} or a .pt / .npy file of node ids, "
                             f"got {predict_nodes!r}")
        check_choice("feature_dtype", feature_dtype, FEATURE_DTYPES)
        check_choice("feature_gather", feature_gather, FEATURE_GATHERS)
        if feature_gather == "device" and gpu_sampling:
            raise ValueError("feature_gather 'device' is for host sampling (in workers); gpu_sampling already keeps "
                             "the features on the GPU: set one of them")
        if str(name).lower() not in KNOWN and str(name).lower() != "custom" and not is_custom(name):
            raise ValueError(unknown_dataset(name))
        check_choice("sampler", sampler, SAMPLERS)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers needs num_workers > 0")
        if gpu_sampling and (num_workers > 0 or pin_memory or sampler not in ("auto", "torch")):
            raise ValueError(f"gpu_sampling samples in the main process with the built-in sampler: it needs "
                             f"num_workers=0 (got {num_workers}), pin_memory=false (got {pin_memory}) and "
                             f"sampler 'auto' or 'torch' (got {sampler!r})")
        if random_split is not None:  # checked before any data is read
            random_split = check_split_fractions(random_split)
        self.save_hyperparameters()
        self.random_split = random_split
        self.name, self.root = (str(name).lower() if not is_custom(name) else str(name)), root
        self.feature_dtype, self.feature_gather = feature_dtype, feature_gather
        self._device_x: Optional[torch.Tensor] = None  # feature_gather 'device': this rank's copy
        self.num_neighbors = list(num_neighbors)
        self.eval_num_neighbors = list(eval_num_neighbors) if eval_num_neighbors else list(num_neighbors)
        if len(self.eval_num_neighbors) != len(self.num_neighbors):
            raise ValueError(f"eval_num_neighbors needs one fanout per hop ({len(self.num_neighbors)}), "
                             f"got {self.eval_num_neighbors}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.persistent_workers = num_workers, pin_memory, persistent_workers
        self.sampler_kind, self.seed = sampler, seed
        #: called with "start" / "end" around each batch's host-to-device transfer (the throughput
        #: monitor sets it to time the transfer); None: nobody listens
        self.transfer_listener = None
        self.gpu_sampling = gpu_sampling
        self.eval_mode, self.predict_nodes = eval_mode, str(predict_nodes)
        self.dataset: Optional[GraphDataset] = None
        self._graph = None  # the (feature store, graph store) pair the loaders sample from (GPU copy: gpu_sampling)
        self._samplers = {}
        self._gpu_dataset: Optional[GraphDataset] = None
        self.prune_before_gather, self.sample_less = prune_before_gather, sample_less
        self._gather: Optional[RowsGather] = None  # the training loader's, when it prunes before gathering
        self._less: Optional[SampleLess] = None  # the training sampler's, when it samples less
        self._epoch_thr = 0.0  # the first layer's threshold at the epoch's start (sample_less; checkpointed)
        self._norms: Optional[torch.Tensor] = None  # every node's input norm, once (either of the two)

    @property
    def num_features(self) -> int:
        return self.load().num_features

    @property
    def num_classes(self) -> int:
        return self.load().num_classes

    @property
    def multilabel(self) -> bool:
        return self.load().multilabel

    @property
    def num_hops(self) -> int:
        return len(self.num_neighbors)

    def load(self) -> GraphDataset:
        if self.dataset is None:
            self.dataset = load_prepared(self.name, self.root, self.seed, self.feature_dtype)
            if self.random_split is not None:
                ds = self.dataset
                ds.train_idx, ds.val_idx, ds.test_idx = random_split(ds.data.y, self.random_split, self.seed)
                train, val = self.random_split
                ds.source += f" (random split {train:g} / {val:g} / rest, seed {self.seed})"
        return self.dataset

    def prepare_data(self) -> None:  # rank 0 of each node: download and prepare if needed
        self.load()

    def setup(self, stage: Optional[str] = None) -> None:
        ds = self.load()
        trainer = getattr(self, "trainer", None)
        world, _ = _dist_info(trainer)
        if self.num_hops < 1:
            raise ValueError("num_neighbors needs at least one hop")
        if self.gpu_sampling:
            self._place_graph(trainer)
        self.print_source(ds)

    def _place_graph(self, trainer) -> None:
        """Copy the graph to the trainer's GPU (once per device) for ``gpu_sampling``."""
        device = (
            trainer.strategy.root_device
            if trainer is not None
            else (
                torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
            )
        )
        if device.type != "cuda":
            raise ValueError(
                f"gpu_sampling needs the trainer on a CUDA device, got {device} "
                f"(set trainer.accelerator=gpu, or data.gpu_sampling=false)"
            )
        if self._graph is None or self._graph[0].get_tensor(group_name=None, attr_name="x").device != device:
            # the mapped host arrays stay in the page cache, not copied into this process
            ds = copy.copy(self.load())
            ds.data = Data(x=ds.data.x.to(device), y=ds.data.y.to(device), num_nodes=ds.data.num_nodes)
            ds.colptr, ds.row = ds.colptr.to(device), ds.row.to(device)
            self._graph, self._samplers = ds.stores(), {}
            self._gpu_dataset = ds

    def print_source(self, ds: GraphDataset) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.is_global_zero:
            print(
                f"[unifews_dist] dataset {ds.name}: {ds.data.num_nodes} nodes, {ds.num_edges} edges, "
                f"read from {ds.source}",
                flush=True,
            )

    @property
    def graph(self):
        """The graph the loaders sample from, as a ``(FeatureStore, GraphStore)`` pair over the
        mapped arrays, or over their GPU copy with ``gpu_sampling``."""
        if self._graph is None:
            if self.gpu_sampling:
                self._place_graph(getattr(self, "trainer", None))
            else:
                fs, gs = self.load().stores()
                if self.feature_gather == "device":  # the loaders gather the labels only
                    fs.remove_tensor(group_name=None, attr_name="x", index=None)
                self._graph = (fs, gs)
        return self._graph

    def _sampler(self, fanout: List[int]):
        key = tuple(fanout)
        if key not in self._samplers:
            folder = None if self.gpu_sampling else self.load().folder
            self._samplers[key] = make_sampler(self.sampler_kind, self.graph, fanout, self.seed, folder)
        return self._samplers[key]

    def _loader(self, seeds: torch.Tensor, fanout: List[int], batch_size: int, train: bool) -> NodeLoader:
        world, rank = _dist_info(getattr(self, "trainer", None))
        if train and seeds.numel() < world:
            raise ValueError(
                f"dataset {self.name!r} has {seeds.numel()} training nodes, fewer than the {world} ranks: "
                f"every rank needs at least one (train on fewer devices)"
            )
        shard = ShardedSeedSampler(seeds.numel(), world, rank, shuffle=train, seed=self.seed, drop=train)
        graph, extra, sampler = self.graph, {}, None if train else self._sampler(fanout)
        if train:
            rule = self._input_rule()
            sampler = self._train_sampler(fanout, rule)
            self._gather = extra["gather"] = self._rows_gather(rule)
            if self._gather is not None and self._gather.features is not None:  # the loader gathers y only
                labels = GatherFeatureStore()
                labels.put_tensor(self.load().data.y, group_name=None, attr_name="y", index=None)
                graph = (labels, graph[1])
        # the loader's own generator: making an iterator then draws nothing from torch's global
        # one, which dropout reads (a resumed run draws what an uninterrupted one does)
        return (ResumableNodeLoader if train else NodeLoader)(
            graph,
            sampler,
            input_nodes=seeds,
            batch_size=batch_size,
            sampler=shard,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            generator=torch.Generator().manual_seed(self.seed),
            **extra,
        )

    def train_dataloader(self) -> NodeLoader:
        return self._loader(self.load().train_idx, self.num_neighbors, self.batch_size, True)

    def _whole_graph(self, nodes: torch.Tensor) -> DataLoader:
        """One batch: the whole graph, to be run layer-wise, and this rank's share of ``nodes``
        (the ones it scores or writes), in order. The batch is made when the loader is iterated
        and dropped after its step, so a prepared graph's int64 ``edge_index`` is held only
        while an evaluation or prediction runs, not between them."""
        world, rank = _dist_info(getattr(self, "trainer", None))
        self.graph  # noqa: B018 (placed on the GPU with gpu_sampling)
        ds = self._gpu_dataset if self.gpu_sampling else self.load()
        mine = nodes[rank::world].to(ds.data.x.device)

        def batch() -> Data:
            b = Data(
                x=ds.data.x,
                edge_index=ds.edge_index(),
                y=ds.data.y,
                nodes=mine,
                layerwise=True,
                infer_batch_size=self.eval_batch_size,
            )
            b.batch_size = int(mine.numel())
            return b

        return DataLoader(OneBatch(batch), batch_size=None, collate_fn=lambda b: b)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """The transfer starts (:attr:`transfer_listener` is told: the throughput monitor times it)."""
        if self.transfer_listener is not None:
            self.transfer_listener("start")
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``feature_gather: device``, a sampled batch's features are gathered here, on the
        device, from this rank's copy of the feature matrix. Features stored in half precision
        (``feature_dtype``) become float32 on the device. Then the transfer has ended
        (:attr:`transfer_listener` is told)."""
        rows = getattr(batch, "x_rows", None)  # only the rows a layer reads (prune_before_gather)
        if self.feature_gather == "device" and not getattr(batch, "layerwise", False) and "n_id" in batch:
            device = batch.n_id.device
            if self._device_x is None or self._device_x.device != device:
                self._device_x = self.load().data.x.to(device)  # on CPU: the mapped matrix itself
            batch.x = self._device_x.index_select(0, batch.n_id if rows is None else batch.n_id.index_select(0, rows))
        x = getattr(batch, "x", None)
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
            batch.x = x = x.float()
        if rows is not None:
            batch.x = expand_rows(batch, x)
        if self.transfer_listener is not None:
            self.transfer_listener("end")
        return batch

    def val_dataloader(self):
        if self.eval_mode == "layerwise":
            return self._whole_graph(self.load().val_idx)
        return self._loader(self.load().val_idx, self.eval_num_neighbors, self.eval_batch_size, False)

    def test_dataloader(self):
        if self.eval_mode == "layerwise":
            return self._whole_graph(self.load().test_idx)
        return self._loader(self.load().test_idx, self.eval_num_neighbors, self.eval_batch_size, False)

    def predict_dataloader(self) -> DataLoader:
        return self._whole_graph(self.prediction_nodes())

    def prediction_nodes(self) -> torch.Tensor:
        """The node ids ``predict_nodes`` names."""
        return named_nodes(self.load(), self.predict_nodes)
