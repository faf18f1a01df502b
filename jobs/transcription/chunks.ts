/**
 * Where to cut a recording into chunks for decoding one after another (issue 13 §5:
 * `pocketsphinx_continuous -infile` prints nothing until it exits, so progress can only be
 * known per decoded piece). Cuts fall at the quietest moment (lowest mean energy over
 * `windowMs`) between `minSeconds` and `maxSeconds` into the chunk, so words are not split.
 * Pure: samples in, [start, end) sample ranges out.
 */
export interface ChunkOptions {
  targetSeconds: number
  minSeconds?: number
  maxSeconds?: number
  windowMs?: number
}

export function chunkBoundaries (samples: Int16Array, sampleRate: number, options: ChunkOptions): Array<[number, number]> {
  const target = Math.round(options.targetSeconds * sampleRate)
  const min = Math.round((options.minSeconds ?? options.targetSeconds / 2) * sampleRate)
  const max = Math.round((options.maxSeconds ?? options.targetSeconds * 1.5) * sampleRate)
  const frame = Math.max(1, Math.round(sampleRate / 100)) // 10 ms frames
  const window = Math.max(1, Math.round((options.windowMs ?? 200) / 10))
  const frames = Math.ceil(samples.length / frame)
  const energy = new Float64Array(frames)
  for (let f = 0; f < frames; f++) {
    let sum = 0
    const end = Math.min(samples.length, (f + 1) * frame)
    for (let i = f * frame; i < end; i++) sum += samples[i]! * samples[i]!
    energy[f] = sum / Math.max(1, end - f * frame)
  }
  // Prefix sums: the mean energy of any window in O(1).
  const prefix = new Float64Array(frames + 1)
  for (let f = 0; f < frames; f++) prefix[f + 1] = prefix[f]! + energy[f]!

  const out: Array<[number, number]> = []
  let start = 0
  while (samples.length - start > max) {
    const first = Math.ceil((start + min) / frame)
    const last = Math.floor((start + max) / frame) - window
    let best = -1
    let bestScore = Infinity
    for (let f = first; f <= last; f++) {
      const mean = (prefix[f + window]! - prefix[f]!) / window
      // Among equally quiet windows, the one nearest the target length.
      const score = mean + Math.abs(f * frame - (start + target)) * 1e-9
      if (score < bestScore) {
        bestScore = score
        best = f
      }
    }
    const cut = best < 0 ? start + target : (best + Math.floor(window / 2)) * frame
    out.push([start, cut])
    start = cut
  }
  out.push([start, samples.length])
  return out
}
