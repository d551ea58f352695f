"""Audio features of the papers' presets, computed with torch/torchaudio from a mono wave ``[S]``.

- ``log_stft`` (OGM-GE and the methods that reuse its loader): the wave tiled to a fixed length,
  clipped to [-1, 1], ``log(|STFT| + 1e-7)`` with a periodic Hann window, centred frames and reflect
  padding (librosa < 0.10's ``stft``, which the reference code ran). Not normalised, as there.
- ``kaldi_fbank`` (AST-style): Kaldi-compatible log-mel filterbank of the mean-removed wave, 25 ms
  Hann windows every 10 ms, no dither, zero-padded or cut to a fixed number of frames, then
  normalised with AudioSet's statistics ``(x + 4.2677393) / (2 * 4.5689974)`` as AST does.
"""

from __future__ import annotations

import numpy as np
import torch

AST_MEAN = -4.2677393
AST_STD = 4.5689974


def tile_to(wave: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``wave`` ``[S]`` end to end and cut it to ``length`` samples: ``[length]``."""
    reps = -(-length // max(1, wave.shape[0]))
    return np.tile(wave, reps)[:length]


def log_stft(wave: np.ndarray, sample_rate: int, seconds: float, n_fft: int = 512, hop: int = 353) -> np.ndarray:
    """``[S]`` -> float32 ``[1, n_fft // 2 + 1, 1 + L // hop]`` with ``L = seconds * sample_rate``
    (CREMA-D at 22,050 Hz, 3 s: ``[1, 257, 188]``)."""
    samples = np.clip(tile_to(wave, int(round(seconds * sample_rate))), -1.0, 1.0)
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft), center=True,
                      pad_mode="reflect", return_complex=True)
    return torch.log(spec.abs() + 1e-7).unsqueeze(0).numpy()


def kaldi_fbank(wave: np.ndarray, sample_rate: int, frames: int, mel_bins: int = 128) -> np.ndarray:
    """``[S]`` -> float32 ``[1, mel_bins, frames]`` (time last, like every audio input here)."""
    import torchaudio

    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).unsqueeze(0)
    x = x - x.mean()
    fbank = torchaudio.compliance.kaldi.fbank(x, htk_compat=True, sample_frequency=sample_rate, use_energy=False,
                                              window_type="hanning", num_mel_bins=mel_bins, dither=0.0,
                                              frame_shift=10)  # [T, mel_bins]
    if fbank.shape[0] < frames:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, frames - fbank.shape[0]))
    fbank = (fbank[:frames] - AST_MEAN) / (2 * AST_STD)
    return fbank.T.unsqueeze(0).numpy()
