"""One typed config tree: dataclasses, YAML files, `key=value` overrides.

A YAML file may name a parent with `base: other.yaml` (path relative to the file); the
parent is loaded first and the child's keys override it. Overrides from the command line
use dotted keys (`train.lr=3e-4`, `sample.iterations=16`), are parsed as YAML scalars and
type-checked against the dataclass field. Errors are `ConfigError` with one line that
names the key and what to do.

A config holds only what its run reads: the `head` section's class follows `head.kind`
(`HEAD_SECTIONS`), and the objective sections (`teacher`, `distill`, `vsd`, `guide`,
`classifier`) exist only where the objective reads them (`OBJECTIVE_SECTIONS`). Configs
saved in the older flat layout migrate on load (`migrate_saved`).
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from energytta.errors import ConfigError, UserError  # noqa: F401 (ConfigError: re-exported)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans,
    which turns `train.mixed_precision: no` (a string key) into False; here they stay
    words, and boolean keys accept them (`_check`)."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
BOOL_WORDS = {"yes": True, "on": True, "no": False, "off": False}
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode,
                           deep: bool = False) -> dict[Any, Any]:
    """A mapping in which a key appears twice is an error: PyYAML keeps the last value
    silently, so `lr: 1e-3` above a forgotten `lr: 1.0` would train at 1.0 unnoticed."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: PyYAML's own check names it
            continue
        if duplicate:
            raise _DuplicateKey(
                None, None, f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                "(each key may appear once per section; keep one)", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                        lambda loader, node: _refuse_duplicate_keys(loader, node))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160  # 100 mel frames per second (AudioLDM front-end)
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    max_seconds: float = 10.0  # longest clip the model's positional embeddings cover
    crop_seconds: float = 4.0  # training crops (random offset); sampling default duration


@dataclass
class CodecConfig:
    name: str = "mel"  # "mel" (normalised log-mel) | "pca" | "vae" (trained here) | "audioldm"
    path: str = ""  # vae: codec .safetensors from energytta-train; audioldm: folder with vae/
    # audioldm: how a waveform becomes the VAE's mel. "audioldm" = AudioLDM's own
    # preprocessing (tools.py / stft.py: mean removed, peak 0.5, TacotronSTFT framing);
    # "legacy" = the raw waveform on the built-in mel framing (checkpoints saved before
    # this key existed load with it)
    preprocess: str = "audioldm"
    griffin_lim_iters: int = 32
    # pca: compact tokens, `pca_frames` mel frames x n_mels on their top `pca_dim` principal
    # components, fitted with the mel statistics (energytta/audio/pca.py)
    pca_dim: int = 64
    pca_frames: int = 5
    vocoder: str = "griffin-lim"  # "griffin-lim" | "trained" | "hifigan" (SpeechT5HifiGan)
    vocoder_path: str = ""  # trained: vocoder .safetensors; hifigan: folder (or its vocoder/)
    train: str = ""  # "vae" | "vocoder": energytta-train trains this instead of a TTA model
    # trained VAE (docs/codecs.md): time and frequency downsampled x2 per level
    vae_width: int = 16  # channels of the first level, doubled per level
    vae_levels: int = 2  # 2 levels = x4 in time and frequency (AudioLDM)
    vae_latent_channels: int = 8
    vae_kl_weight: float = 1.0e-4  # on the KL summed over latents / mel elements
    vae_adv_weight: float = 0.0  # hinge GAN term (patch discriminator on mels); 0 = off
    vae_perceptual_weight: float = 0.0  # discriminator feature matching; 0 = off
    # trained vocoder: ConvNeXt over mel frames + iSTFT head (Vocos)
    vocoder_width: int = 128
    vocoder_depth: int = 4
    vocoder_n_fft: int = 640  # iSTFT size of the head (hop = audio.hop_length)
    # the head's log-magnitude is a residual on the mel's pseudo-inverse magnitude (zero at
    # init), so loud frames are at the right level from step 0 and the net learns the phase
    vocoder_mag_prior: bool = False


@dataclass
class TextConfig:
    model: str = ""  # local folder of a transformers encoder; "" = packaged MiniLM
    # a second encoder folder; its token states follow text.model's along the sequence,
    # each in its own feature block (IMPACT: Flan-T5 and CLAP; energytta/text.py)
    extra_model: str = ""
    max_length: int = 64  # longer prompts are truncated with a warning


@dataclass
class ModelConfig:
    width: int = 256
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # projection / MLP dropout (MAR: proj_dropout 0.1)
    attn_dropout: float = 0.1
    patch_t: int = 8  # latent frames per token
    patch_f: int = 16  # latent frequency bins per token
    text_dropout: float = 0.1  # caption dropout for classifier-free guidance
    mask_ratio_min: float = 0.7  # MAR: mask ratio ~ truncnorm on [min, 1], mean 1, std 0.25
    mask_ratio_std: float = 0.25
    grad_checkpointing: bool = False
    # where the backbone learns *where* a token is: "learned" (MAR: absolute embeddings
    # added to the inputs, std 0.02) or "rope" (rotary positions in every attention over
    # latent time, and over frequency when patch_f < the codec's bins; Su et al. 2021).
    # With "learned" the shipped teacher read its context as a bag (docs/architecture.md).
    pos_embed: str = "learned"
    # one-pass generators (caption-only VSD, docs/captiononly.md): Gaussian noise (B,N,d)
    # enters the decoder through a zero-initialised projection added to the mask tokens,
    # so tokens generated in one pass can be coordinated (per-token head noise cannot)
    noise_inputs: bool = False
    # guidance-distilled students (`train.objective=guidance`): a head on the
    # backbone's output predicts the guidance slope, z + (w - 1)·Δ(z), so one conditional
    # pass gives the two-pass guided features z_u + w(z_c - z_u); at w = 1 it is the
    # plain conditional model (docs/guidance.md)
    guidance_embed: bool = False
    guidance_head: str = "mlp"  # "mlp": per token; "attention": one block over all tokens first


@dataclass
class HeadConfig:
    """The keys every head kind has. `head.kind` picks the section's class (`HEAD_SECTIONS`),
    so a run's config carries only its own head's keys."""
    kind: str = "diffusion"  # "diffusion" (teacher, teachers/), "onestep" or "energy" (student)
    depth: int = 3  # residual AdaLN blocks
    width: int = 512
    lr_mult: float = 1.0


@dataclass
class DiffusionHeadConfig(HeadConfig):
    """The diffusion head (MAR DiffLoss / IMPACT; teachers/diffusion_head.py), and the
    one-step head that runs its network once (teachers/onestep.py)."""
    num_timesteps: int = 1000
    noise_schedule: str = "cosine"
    sampling_steps: int = 100
    learn_sigma: bool = False
    batch_mul: int = 4  # MAR: each token's loss uses this many noise draws
    clip_x0: float = 10.0  # clamp predicted x_0 when sampling (0 = off, as MAR); see teachers/
    sample_max_t: int = -1  # first timestep of the sampling chain; -1 = T-1 (MAR); see teachers/
    # what the network predicts: "eps" (MAR, DDPM), "v" (Salimans & Ho 2022: v = √ᾱ·ε − √(1−ᾱ)·x₀,
    # well-posed at zero SNR, so the chain can start at t = T) or "x0"
    prediction: str = "eps"
    # SNR shift of the schedule (simple diffusion, Hoogeboom et al. 2023; SD3 §5.3.2):
    # SNR'(t) = SNR(t) / shift². A 320-dim token's mean stays readable from x_t far longer
    # than one dimension, so shift > 1 spends more training steps where the backbone must
    # say what is there. 1 = the plain schedule.
    schedule_shift: float = 1.0


@dataclass
class EnergyHeadConfig(HeadConfig):
    """The energy-score head (EAR; energytta/models/energy_head.py)."""
    kind: str = "energy"
    noise_dim: int = 64
    noise_type: str = "gaussian"  # "gaussian" | "uniform"
    num_samples: int = 2  # m >= 2 samples per token for the energy score
    alpha: float = 1.0  # energy-score exponent, in (0, 2)
    train_temperature: float = 1.0  # tau on the sample-to-sample term


# head.kind -> its section's class. Data, not code: the heads themselves register with
# `energytta.models.heads` (plugins included), and a plugin head with keys of its own adds
# its section here with `register_head_section`; a kind not listed gets the common keys only.
HEAD_SECTIONS: dict[str, type[HeadConfig]] = {
    "diffusion": DiffusionHeadConfig,
    "onestep": DiffusionHeadConfig,  # the diffusion head's network, run once
    "energy": EnergyHeadConfig,
}


def register_head_section(kind: str, section: type[HeadConfig]) -> None:
    """Make `head.kind=<kind>` configs carry `section`'s keys (a `HeadConfig` subclass)."""
    HEAD_SECTIONS[kind] = section


def head_section_class(kind: str) -> type[HeadConfig]:
    return HEAD_SECTIONS.get(kind, HeadConfig)


def with_head_kind(head: HeadConfig, kind: str) -> HeadConfig:
    """`head` as a `kind` section: the keys both kinds have keep their values, the others
    take the new kind's defaults."""
    cls = head_section_class(kind)
    if type(head) is not cls:
        names = {f.name for f in dataclasses.fields(cls)}
        head = cls(**{f.name: getattr(head, f.name) for f in dataclasses.fields(head)
                      if f.name in names})
    head.kind = kind
    return head


@dataclass
class TeacherConfig:
    ckpt: str = ""  # inference or training checkpoint of a trained teacher


@dataclass
class DistillConfig:
    weight: float = 1000.0  # lambda on the feature-distillation loss (0 disables)
    loss: str = "mse"  # "mse" | "cosine"
    layers: list[int] = field(default_factory=list)  # extra decoder layers to align
    init_from_teacher: bool = True
    freeze_backbone: bool = False


@dataclass
class VSDConfig:
    """Caption-only variational score distillation (SwiftBrush / SwiftAudio on a MAR teacher;
    energytta/train/objectives/captiononly.py)."""
    init: str = ""  # "" = the teacher (teacher.ckpt); else a student/captiononly checkpoint
    real_cfg: float = 4.5  # guidance on the frozen teacher's score (SwiftBrush: 4.5)
    fake_cfg: float = 1.0  # guidance on the LoRA teacher's score (1 = none)
    t_min: int = 20  # t ~ U[t_min, t_max] (SwiftBrush: [20, 980])
    t_max: int = 980
    weighting: str = "swiftbrush"  # "swiftbrush": w = 1 - ab_t on eps; "dmd": x0-normalised
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_lr_mult: float = 1.0  # the LoRA teacher's lr relative to train.lr
    fake_text_dropout: float = 0.1  # caption dropout of the LoRA teacher's denoising loss
    tv_weight: float = 0.0  # lambda_TV on the temporal total variation of the latent
    tv_norm: str = "l1"  # "l1" | "l2"


@dataclass
class GuideConfig:
    """Single-pass guidance distillation (energytta/train/objectives/guidance.py): a student
    learns to give, in one conditional pass at scale w, its reference's two-pass guided
    features z_u + w·(z_c − z_u) (Meng et al. 2023, "On distillation of guided diffusion
    models", stage one, applied to MAR's feature-space CFG)."""
    init: str = "student"  # the reference student (and the initial weights): a checkpoint
    max_scale: float = 5.0  # w ~ U[1, max_scale] per row (the shipped sample.cfg is 5)
    unguided_frac: float = 0.2  # rows trained at w = 1 (target z_c): the anchor


@dataclass
class DataConfig:
    train: str = "data/synth/train.jsonl"  # manifest (jsonl/csv) or cached-latent folder
    val: str = "data/synth/val.jsonl"
    # "audio": manifests' wavs (or a latent cache); "captions": captions only, from a .txt
    # (one per line) or a manifest, whose audio is never opened (caption-only distillation)
    kind: str = "audio"
    batch_size: int = 32
    num_workers: int = 0


@dataclass
class TrainConfig:
    # what trains (energytta.train.objectives): "teacher" | "student" | "captiononly" |
    # "guidance" | "vae" | "vocoder" | "classifier"; "" = what the config implies:
    # codec.train's part, else the head's role
    objective: str = ""
    out_dir: str = "runs/default"
    seed: int = 0
    steps: int = 2000
    lr: float = 4e-4
    min_lr: float = 0.0
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" | "constant"
    weight_decay: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.999
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (GPU)
    # several processes: DDP's find_unused_parameters (a graph walk every step). Off unless
    # set here or the objective can leave a parameter without gradient (caption-only VSD)
    find_unused_parameters: bool = False
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    sample_every: int = 0  # 0 = only at the end
    # validation stage (energytta/train/validation.py): every val_every steps and at the
    # end, the objective scores the first val_batches batches of data.val; 0 = off
    val_every: int = 0
    val_batches: int = 4
    # validation's generation check (energytta.eval.diagnostics): this many data.val
    # captions generated at val_iterations and scored on the decoded mel (at most the
    # val_batches x batch_size clips a stage reads); 0 = skip
    val_generate: int = 32
    val_iterations: int = 16
    # wall-clock budget of one energytta-train invocation in minutes (0 = none): at the
    # budget the run saves, validates and exports as at train.steps; --resume continues
    max_minutes: float = 0.0
    # start a fresh run from a model file's weights (a path, a step or run folder, or a
    # shipped name: teacher, student, guided, captiononly) with a fresh optimizer and
    # schedule; "" = the objective's own initialisation. --resume ignores it.
    init_from: str = ""
    sample_prompts: list[str] = field(default_factory=lambda: [
        "a high beep repeats three times",
        "a dog-like bark with rain in the background",
    ])


@dataclass
class ClassifierConfig:
    """The synth-classifier embedder (energytta/eval/classifier.py), trained by
    `train.objective=classifier`."""

    channels: list[int] = field(default_factory=lambda: [96, 96, 128, 128])  # conv blocks
    kernel: int = 5
    features: int = 128  # penultimate width: the FD/FAD features
    dropout: float = 0.2


@dataclass
class SampleConfig:
    iterations: int = 64
    cfg: float = 5.0  # IMPACT's maximum guidance scale
    cfg_schedule: str = "linear"  # "constant" | "linear" | "cosine"
    temperature: float = 1.0
    duration: float = 4.0
    seed: int = 0
    batch_size: int = 8
    # on a guidance-distilled checkpoint (model.guidance_embed): guide with ONE conditional
    # pass per step (its scale as an input); false runs the two-pass CFG (cond + uncond rows)
    one_pass_cfg: bool = True
    # what renders the clips when the caller names no vocoder: "checkpoint" (the codec's
    # own, e.g. Griffin-Lim), "griffin-lim", or "trained" (the shipped trained vocoder)
    vocoder: str = "checkpoint"


# objective -> the sections it reads (`train.objective`; "" resolves with `objective_of`).
# Only these sections exist in a run's config: `validate` adds them with their defaults
# and refuses the others. An objective not listed here (a plugin that declared none with
# `register_objective`) keeps whatever sections its config sets.
OBJECTIVE_SECTIONS: dict[str, tuple[str, ...]] = {
    "teacher": (),
    "student": ("teacher", "distill"),
    "captiononly": ("teacher", "vsd"),
    "guidance": ("guide",),
    "vae": (),
    "vocoder": (),
    "classifier": ("classifier",),
}
SECTION_CLASSES: dict[str, type] = {
    "teacher": TeacherConfig, "distill": DistillConfig, "vsd": VSDConfig,
    "guide": GuideConfig, "classifier": ClassifierConfig}


def objective_of(objective: str, codec_train: str, head_kind: str) -> str:
    """The objective a config trains: `train.objective`, else `codec.train`'s part, else
    the student for an energy head and the teacher for any other."""
    return objective or codec_train or ("student" if head_kind == "energy" else "teacher")


class MissingSectionError(ConfigError, AttributeError):
    """A key of a section the config's objective does not read was asked for (an
    AttributeError too, so `getattr(cfg.vsd, "real_cfg", None)` is None)."""


class AbsentSection:
    """What a config holds for an objective section its objective does not read: falsy,
    equal to None, and reading any key of it is a MissingSectionError naming the section
    and its readers. (A plain None would say "'NoneType' object has no attribute".)"""

    __slots__ = ("_name", "_config")

    def __init__(self, name: str, config: "Config") -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_config", config)

    def __getattr__(self, key: str) -> Any:
        name = object.__getattribute__(self, "_name")
        objective = object.__getattribute__(self, "_config").objective()
        readers = [o for o, secs in OBJECTIVE_SECTIONS.items() if name in secs]
        raise MissingSectionError(
            f"config section '{name}' is not in this config: its objective '{objective}' "
            f"does not read it (read by: {', '.join(readers) or 'no objective'})")

    def __bool__(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, AbsentSection)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "None"

    def __deepcopy__(self, memo: dict) -> "AbsentSection":
        config = object.__getattribute__(self, "_config")  # a copied config's own stand-in
        return AbsentSection(object.__getattribute__(self, "_name"), memo.get(id(config), config))


@dataclass
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=DiffusionHeadConfig)  # class by head.kind
    # objective sections: None where the objective does not read them (OBJECTIVE_SECTIONS)
    teacher: TeacherConfig | None = None
    distill: DistillConfig | None = None
    vsd: VSDConfig | None = None
    guide: GuideConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    classifier: ClassifierConfig | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # an absent objective section is an AbsentSection, whoever writes None there
        if value is None and name in SECTION_CLASSES:
            value = AbsentSection(name, self)
        object.__setattr__(self, name, value)

    def objective(self) -> str:
        """The objective this config trains (`objective_of`)."""
        return objective_of(self.train.objective, self.codec.train, self.head.kind)

    def fit_sections(self) -> None:
        """Objective sections exist where the objective reads them (`OBJECTIVE_SECTIONS`):
        missing ones get their defaults; one it does not read is a ConfigError (it would
        have no effect). An objective that declared no sections keeps what it is given."""
        objective = self.objective()
        reads = OBJECTIVE_SECTIONS.get(objective)
        for name, cls in SECTION_CLASSES.items() if reads is not None else ():
            present = self.section(name) is not None
            if name in reads and not present:
                setattr(self, name, cls())
            elif present and name not in reads:
                users = [o for o, secs in OBJECTIVE_SECTIONS.items() if name in secs]
                raise ConfigError(
                    f"config section '{name}' is set but the objective '{objective}' does not "
                    f"read it ({name} is read by: {', '.join(users)}); remove the section "
                    f"('{name}: null' in a child config) or set train.objective")

    def section(self, name: str) -> Any:
        """The section called `name`, or None where this config has none."""
        value = getattr(self, name)
        return None if isinstance(value, AbsentSection) else value

    def _sections(self) -> dict[str, Any]:
        return {f.name: self.section(f.name) for f in dataclasses.fields(self)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self._sections() == other._sections()

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self._sections().items())})"

    def to_dict(self) -> dict[str, Any]:
        """Every present section as a dict (absent objective sections are left out)."""
        return {k: dataclasses.asdict(v) for k, v in self._sections().items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# named configs ship inside the package, so `--config tiny` works after a plain `pip install`
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_HELP = ("YAML config: a bare name (no '/', no .yaml) is a packaged config, e.g. tiny or "
               "teacher_small (energytta/configs/); anything else is a path: ./tiny, x/y.yaml")


# ---------------------------------------------------------------------------- checks
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to `tp` (int -> float only) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is bool and isinstance(value, str) and value.lower() in BOOL_WORDS:
        return BOOL_WORDS[value.lower()]
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def _merge(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Write the nested dict `data` into dataclass `obj`, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(_unknown_key(obj, key, full, hints))
        if isinstance(obj, Config) and key == "head":
            _merge_head(obj, value, f"{full}.")
        elif isinstance(obj, Config) and key in SECTION_CLASSES:
            _merge_optional(obj, key, value, f"{full}.")
        elif dataclasses.is_dataclass(hints[key]):
            _merge(getattr(obj, key), value, f"{full}.")
        else:
            setattr(obj, key, _check(value, hints[key], full))


def _unknown_key(obj: Any, key: str, full: str, hints: dict[str, Any]) -> str:
    if isinstance(obj, HeadConfig):
        kinds = [k for k, cls in HEAD_SECTIONS.items()
                 if key in {f.name for f in dataclasses.fields(cls)}]
        if kinds:
            return (f"config key '{full}' belongs to head.kind={' or '.join(kinds)}; this "
                    f"config's head.kind is {obj.kind}")
    return f"unknown config key '{full}' (valid here: {', '.join(hints)})"


def _merge_head(cfg: Config, data: Any, prefix: str) -> None:
    """`head.kind` first, whatever the order of the layer's keys: it picks the section's
    class (`with_head_kind`), then the other keys are checked against that class."""
    if isinstance(data, dict) and "kind" in data:
        cfg.head = with_head_kind(cfg.head, _check(data["kind"], str, f"{prefix}kind"))
        data = {k: v for k, v in data.items() if k != "kind"}
    _merge(cfg.head, data, prefix)


def _merge_optional(cfg: Config, name: str, data: Any, prefix: str) -> None:
    """An objective section: set, it exists (defaults first); `name: null` removes it (a
    child config whose objective does not read its parent's section)."""
    if data is None:
        setattr(cfg, name, None)
        return
    section = cfg.section(name) or SECTION_CLASSES[name]()
    _merge(section, data, prefix)
    setattr(cfg, name, section)


# ---------------------------------------------------------------------------- loading
def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """Return the chain of mappings [root parent, ..., path] following `base:` links."""
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"config file not found: {path} (packaged configs, given by bare "
                          f"name: {names})")
    if path in seen:
        raise ConfigError(f"config 'base' loop through {path}")
    try:
        data = _yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = str(e).splitlines()[0]
        raise ConfigError(f"cannot parse config file {path}: {line}") from None
    except RecursionError:  # the YAML composer recurses once per nesting level
        raise ConfigError(f"cannot parse config file {path}: nested too deeply (a config "
                          "is sections of key: value)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    base = data.pop("base", None)
    chain = _read_yaml(resolve_config_path(str(base), path.parent), seen + (path,)) if base else []
    return chain + [data]


def resolve_config_path(name: str, relative_to: Path | None = None) -> Path:
    """Where the config called `name` is; the rule is the same for `--config` and `base:`.

    - A bare name (no directory part, no `.yaml`/`.yml` suffix), e.g. `tiny`, is the
      packaged `energytta/configs/tiny.yaml`, whatever files the working folder holds (a
      file named `tiny` there does not shadow it; write `./tiny` to mean that file). A bare
      name that is not packaged is read as a path.
    - Anything else is a path (`./tiny`, `x/tiny.yaml`, `tiny.yaml`), relative to the
      working folder, or for a `base:` link to the folder of the file that names it.

    Args:
        name: the config as the user wrote it.
        relative_to: folder of the YAML file whose `base:` names `name` (None for --config).
    Returns:
        the resolved path; it may not exist (`_read_yaml` then says so).
    """
    if Path(name).name == name and Path(name).suffix not in (".yaml", ".yml"):
        packaged = CONFIG_DIR / f"{name}.yaml"
        if packaged.is_file():
            return packaged.resolve()
    path = Path(name) if relative_to is None else relative_to / name
    return path.resolve() if path.is_file() else path


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=1e-3` -> ("a.b", 0.001); the value is read as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = _yaml(raw) if raw.strip() else ""
    except _DuplicateKey as e:
        raise ConfigError(f"override {text!r}: {e.problem}") from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) or value is None:
        value = raw  # keep strings verbatim ("on", "1.0.0", paths...)
    return key.strip(), value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _merge(cfg, data)
    return cfg


# keys added after checkpoints were shipped: (section, key, value a saved config that lacks
# the key meant, when) -- a checkpoint must keep its old behaviour, not take the new default
_SAVED_DEFAULTS = (("codec", "preprocess", "legacy",
                    lambda d: d.get("codec", {}).get("name") == "audioldm"),)
# the head section as configs were saved before it had one class per head.kind: every
# kind's keys. A YAML layer whose head holds all of them is such a saved config.
_FLAT_HEAD_KEYS = frozenset(
    f.name for cls in (DiffusionHeadConfig, EnergyHeadConfig) for f in dataclasses.fields(cls))


def migrate_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict (checkpoint, state.json, a run's config.yaml) in today's layout,
    in place: configs were once saved with every head kind's keys and every objective's
    section. The head keeps its own kind's keys and the objective only the sections it
    reads (`OBJECTIVE_SECTIONS`). What goes is dropped whatever its value: most of it held
    its defaults, and where a run had set a value (the shipped student's
    `head.sample_max_t`, the guided student's `distill` section) nothing read it, so it
    never had an effect. Keys no head kind has stay (and are refused as unknown)."""
    head, train, codec = (data.get(k) for k in ("head", "train", "codec"))
    head, train, codec = (d if isinstance(d, dict) else {} for d in (head, train, codec))
    kind = str(head.get("kind", "diffusion"))
    if head:
        own = {f.name for f in dataclasses.fields(head_section_class(kind))}
        data["head"] = {k: v for k, v in head.items() if k in own or k not in _FLAT_HEAD_KEYS}
    objective = objective_of(str(train.get("objective", "")), str(codec.get("train", "")),
                             str(kind))
    if objective in OBJECTIVE_SECTIONS:
        for name in SECTION_CLASSES:
            if name not in OBJECTIVE_SECTIONS[objective]:
                data.pop(name, None)
    return data


def from_saved_dict(data: dict[str, Any]) -> Config:
    """`from_dict` for a config stored in a checkpoint: missing keys that changed a default
    get the value the checkpoint was trained with; the old flat layout migrates
    (`migrate_saved`)."""
    data = json.loads(json.dumps(data))  # a deep copy; the caller's dict stays as it was
    for section, key, value, applies in _SAVED_DEFAULTS:
        if isinstance(data.get(section), dict) and key not in data[section] and applies(data):
            data[section][key] = value
    return from_dict(migrate_saved(data))


def _is_flat_saved(layer: dict[str, Any]) -> bool:
    head = layer.get("head")
    return isinstance(head, dict) and _FLAT_HEAD_KEYS <= set(head)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply overrides. A run
    folder's config.yaml saved in the old flat layout loads migrated (`migrate_saved`)."""
    cfg = Config()
    if path is not None:
        for layer in _read_yaml(resolve_config_path(str(path))):
            _merge(cfg, migrate_saved(layer) if _is_flat_saved(layer) else layer)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `key=value` overrides to `cfg` in place (type-checked), check every value's
    range (`energytta.config_rules`) and return it. `head.kind=` overrides apply first, so
    `head.noise_dim=8 head.kind=energy` reads as `head.kind=energy head.noise_dim=8`."""
    from energytta.config_rules import validate

    parsed = [parse_override(text) for text in overrides]
    for key, value in sorted(parsed, key=lambda kv: kv[0] != "head.kind"):
        _merge(cfg, _nest(key, value))
    return validate(cfg)
