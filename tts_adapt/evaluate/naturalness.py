"""Predicted naturalness: DNSMOS, a neural estimate of the mean opinion score listeners would give a clip.

What DNSMOS is
--------------
DNSMOS is Microsoft's non-intrusive speech-quality predictor from the Deep Noise Suppression (DNS)
Challenge (Reddy, Gopal and Cutler: "DNSMOS", ICASSP 2021, and "DNSMOS P.835", ICASSP 2022). It needs
no reference recording: a network maps a clip alone to the 1–5 scores crowd listeners would give it.
Its training data were noisy speech and the outputs of noise suppressors, rated by crowd workers
following ITU-T P.808 (one overall rating) and ITU-T P.835 (three ratings: the speech signal, the
background and the overall quality). So it rates the noise and processing artefacts of recorded speech
(hiss, residual noise, musical noise, muffling and distortion by a suppressor). It was not trained on
synthetic speech: it does not rate whether a voice sounds human, whether it says the right words or
whether it sounds like its speaker, and how well its scores rank text-to-speech systems is not
established by its training. It is a prediction, not a listening test; read it as "how clean does
this sound to a model of noise-suppression listeners", next to the other measures.

The models
----------
The weights are those shipped in the ``speechmos`` wheel (0.0.1.1, the DNS Challenge's own ONNX
files, loaded from the installed package: nothing is downloaded):

* ``speechmos/dnsmos_models/sig_bak_ovr.onnx`` (P.835): raw 16 kHz samples of a 9.01 s window
  (144 160 samples) → SIG, BAK, OVRL, each mapped through the fixed polynomials of the reference code;
* ``speechmos/dnsmos_models/model_v8.onnx`` (P.808): a 120-band log-mel spectrogram (librosa, FFT 321,
  hop 160, in dB relative to the window's maximum, ``(dB + 40) / 40``) of the same window without its
  last 160 samples (900 frames) → one overall score, used as it is.

(The wheel also holds ``sig.onnx`` and ``bak_ovr.onnx``, an earlier P.835 pair, and the
"personalised" ``pdnsmos_models/sig_bak_ovr.onnx``; none of them is used here.)

The sessions are opened once, on the first clip, with ``threads`` intra-op threads (1 by default:
evaluation runs next to other work on small CPUs). The computation follows ``speechmos.dnsmos`` and the
DNS Challenge's ``dnsmos_local.py`` step by step, with a clip's windows scored in batches of up to 8.

How a clip is scored
--------------------
1. ``(channels, num_samples)`` is mixed down to mono; empty audio and audio with NaN or infinite
   samples are refused with a :class:`ValueError`; samples beyond [-1, 1] are clipped (as when the clip is
   saved as 16-bit PCM);
2. the clip is resampled to 16 kHz with :func:`tts_adapt.data.audio.resample`;
3. a clip shorter than the 9.01 s window is **repeated**, doubled until it is at least 9.01 s long (the
   reference code's padding, kept so that scores agree with it): a 3 s sentence is scored as 12 s of the
   same sentence said four times, a 0.3 s clip as 32 repetitions. Every non-empty clip thus gets a
   defined score, but the shorter the clip, the less its loop resembles the 9 s windows of continuous
   speech the model was built for: scores of clips well under a second mean little. ``dnsmos_repeats``
   reports the copies;
4. windows of 9.01 s start every second (as many as the reference code takes: the last second or two of a
   long clip may fall outside every window); each window is scored and the scores are averaged. The
   reference code cuts its windows with a float product that rounds the end of windows 7–23 one sample
   short and then skips them; here every window is scored. The two agree (to 1e-4) while the (repeated)
   clip is under 17 s, i.e. for clips shorter than 8.5 s or of 9.01–17 s; on longer ones the means can
   differ by a few hundredths (a 29 s clip: OVRL 2.43 here, 2.46 with ``speechmos.dnsmos.run``).

Cost: 0.4–0.9 s per window on one thread of a busy 2-core machine (at best the P.835 network 0.3 s, the
P.808 mel spectrogram and network 0.1 s), after 3–5 s to import and open the models. A clip under 8.5 s
is 1–8 windows (a 4.9 s sentence, repeated to 9.7 s: one), a long clip one window per second.

For scale: clean flite speech (the ``slt`` voice, 16 kHz) gets OVRL 2.4 (SIG 3.0, BAK 3.4, P.808 3.2);
the same speech in white noise at about 5 dB SNR 1.6 (BAK 1.7); the noise alone 1.1.

:meth:`NaturalnessPredictor.score` returns ``dnsmos`` (P.835 OVRL), ``dnsmos_sig``, ``dnsmos_bak``,
``dnsmos_p808`` as floats, plus ``dnsmos_windows`` and ``dnsmos_repeats``. The scores are deterministic
for the same input and threads; what is uncertain is their meaning for synthetic speech (see above).
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

import numpy as np

from tts_adapt.data.audio import load_audio, resample

#: The rate of the DNSMOS models, Hz.
DNSMOS_RATE = 16000
#: One scored window: 9.01 s (144 160 samples at 16 kHz); windows start every second.
WINDOW_SECONDS = 9.01
WINDOW_SAMPLES = int(WINDOW_SECONDS * DNSMOS_RATE)
HOP_SAMPLES = DNSMOS_RATE
#: Windows scored in one ONNX call (bounds the memory of long clips).
BATCH_WINDOWS = 8
#: The model files inside the installed speechmos package.
P835_MODEL = "dnsmos_models/sig_bak_ovr.onnx"
P808_MODEL = "dnsmos_models/model_v8.onnx"

# The reference code's maps of the P.835 network's raw outputs to the MOS scale (non-personalised model).
_POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_POLY_OVRL = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


def speechmos_model_dir() -> Path:
    """The folder of the installed ``speechmos`` package that holds its model folders."""
    try:
        return Path(str(resources.files("speechmos")))
    except ModuleNotFoundError:
        raise ModuleNotFoundError("DNSMOS needs the speechmos package (its wheel ships the ONNX models): "
                                  "pip install speechmos==0.0.1.1") from None


def _p808_features(window: np.ndarray) -> np.ndarray:
    """The P.808 model's input for one window: ``(900, 120)`` normalised log-mel frames."""
    import librosa

    mel = librosa.feature.melspectrogram(y=window[:-160], sr=DNSMOS_RATE, n_fft=321, hop_length=160, n_mels=120)
    return ((librosa.power_to_db(mel, ref=np.max) + 40.0) / 40.0).T


class NaturalnessPredictor:
    """DNSMOS P.835 and P.808 on CPU with onnxruntime: see the module docstring.

    ``threads`` is onnxruntime's intra-op thread count (1: single-threaded). ``model_dir`` is the folder
    holding ``dnsmos_models/`` (default: the installed speechmos package). The sessions are opened on the
    first :meth:`score`, once; one predictor may be shared by threads.
    """

    sample_rate = DNSMOS_RATE

    def __init__(self, threads: int = 1, model_dir: str | Path | None = None):
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._sessions = None
        self._lock = threading.Lock()

    def model_paths(self) -> dict[str, Path]:
        """The ``p835`` and ``p808`` ONNX files this predictor loads."""
        root = self.model_dir if self.model_dir is not None else speechmos_model_dir()
        return {"p835": root / P835_MODEL, "p808": root / P808_MODEL}

    def _load(self):
        with self._lock:
            if self._sessions is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                options.log_severity_level = 3
                sessions = {}
                for name, path in self.model_paths().items():
                    if not path.is_file():
                        raise FileNotFoundError(f"DNSMOS model {path} not found (is speechmos==0.0.1.1 installed?)")
                    sessions[name] = ort.InferenceSession(str(path), sess_options=options,
                                                          providers=["CPUExecutionProvider"])
                self._sessions = sessions
        return self._sessions

    def score(self, wav: np.ndarray, sample_rate: int) -> dict:
        """DNSMOS of one clip ``wav`` ``(num_samples,)`` (float in [-1, 1], or ``(channels, num_samples)``,
        mixed down) at ``sample_rate``.

        Returns ``{"dnsmos": OVRL, "dnsmos_sig": SIG, "dnsmos_bak": BAK, "dnsmos_p808": P.808}`` (floats,
        1–5 scale, higher is better) with ``dnsmos_windows`` (9.01 s windows averaged) and ``dnsmos_repeats``
        (copies of a clip shorter than a window, 1 otherwise). Raises :class:`ValueError` for empty audio,
        NaN or infinite samples, or a bad shape or rate.
        """
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 2:
            wav = wav.mean(axis=0)
        if wav.ndim != 1:
            raise ValueError(f"expected audio of shape (num_samples,) or (channels, num_samples), got {wav.shape}")
        if wav.size == 0:
            raise ValueError("audio is empty (0 samples): DNSMOS needs at least one sample to score")
        if not np.isfinite(wav).all():
            raise ValueError("audio contains NaN or infinite samples: DNSMOS cannot score it")
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        wav = np.clip(resample(wav, int(sample_rate), DNSMOS_RATE), -1.0, 1.0)
        if wav.size == 0:
            raise ValueError(f"audio is empty after resampling to {DNSMOS_RATE} Hz")

        repeats = 1
        while len(wav) < WINDOW_SAMPLES:  # the reference code's padding: the clip doubled until a window long
            wav = np.concatenate([wav, wav])
            repeats *= 2
        windows = int(np.floor(len(wav) / DNSMOS_RATE) - WINDOW_SECONDS) + 1
        starts = [i * HOP_SAMPLES for i in range(windows) if i * HOP_SAMPLES + WINDOW_SAMPLES <= len(wav)]

        sessions = self._load()
        raw, p808 = [], []
        for b in range(0, len(starts), BATCH_WINDOWS):
            batch = np.stack([wav[s:s + WINDOW_SAMPLES] for s in starts[b:b + BATCH_WINDOWS]])
            raw.append(sessions["p835"].run(None, {"input_1": batch})[0])
            mels = np.stack([_p808_features(w) for w in batch]).astype(np.float32)
            p808.append(sessions["p808"].run(None, {"input_1": mels})[0][:, 0])
        raw, p808 = np.concatenate(raw).astype(np.float64), np.concatenate(p808).astype(np.float64)
        return {"dnsmos": float(np.mean(_POLY_OVRL(raw[:, 2]))),
                "dnsmos_sig": float(np.mean(_POLY_SIG(raw[:, 0]))),
                "dnsmos_bak": float(np.mean(_POLY_BAK(raw[:, 1]))),
                "dnsmos_p808": float(np.mean(p808)),
                "dnsmos_windows": len(starts), "dnsmos_repeats": repeats}

    def score_file(self, path: str | Path) -> dict:
        """:meth:`score` of an audio file (read and resampled by :func:`tts_adapt.data.audio.load_audio`)."""
        return self.score(load_audio(path, DNSMOS_RATE)[0], DNSMOS_RATE)
