import { useEffect, useRef } from 'preact/hooks'
import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'
import { metricLong, unitLabel } from './format.ts'

export interface Marker { at: number, label: string, kind: 'opened' | 'acknowledged' | 'note' }

/**
 * One vital over [from, to): uPlot draws on a canvas (thousands of points stay smooth). Rule
 * thresholds are dashed horizontal lines, alert openings (red) and acknowledgements (blue)
 * and voice notes (grey) vertical ones; the figure's caption says the same in words.
 */
export function VitalChart ({ metric, unit, points, from, to, thresholds, markers }: {
  metric: string, unit: string, points: Array<[number, number]>, from: number, to: number,
  thresholds: Array<{ value: number, label: string }>, markers: Marker[]
}) {
  const box = useRef<HTMLDivElement>(null)
  useEffect(() => {
    const el = box.current
    if (el === null) return
    const xs = points.map(([t]) => t / 1000)
    const ys = points.map(([, v]) => v)
    const values = [...ys, ...thresholds.map((t) => t.value)]
    const lo = values.length === 0 ? 0 : Math.min(...values)
    const hi = values.length === 0 ? 1 : Math.max(...values)
    const pad = Math.max(1, (hi - lo) * 0.1)
    const draw = (u: uPlot): void => {
      const ctx = u.ctx
      ctx.save()
      ctx.lineWidth = 1.5 * devicePixelRatio
      ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio])
      ctx.strokeStyle = '#b45309'
      for (const t of thresholds) {
        const y = u.valToPos(t.value, 'y', true)
        ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke()
      }
      ctx.setLineDash([])
      for (const m of markers) {
        if (m.at < from || m.at >= to) continue
        const x = u.valToPos(m.at / 1000, 'x', true)
        ctx.strokeStyle = m.kind === 'opened' ? '#b91c1c' : m.kind === 'acknowledged' ? '#1d4ed8' : '#6b7280'
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke()
      }
      ctx.restore()
    }
    const plot = new uPlot({
      width: Math.max(280, el.clientWidth),
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: [from / 1000, to / 1000] }, y: { range: [lo - pad, hi + pad] } },
      axes: [{ stroke: '#374151' }, { stroke: '#374151', size: 50 }],
      series: [{}, { label: metricLong(metric), stroke: '#0f766e', width: 2, points: { show: points.length < 200, size: 5 } }],
      hooks: { draw: [draw] }
    }, [xs, ys], el)
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(280, el.clientWidth), height: 180 }))
    resize.observe(el)
    return () => { resize.disconnect(); plot.destroy() }
  }, [metric, points, from, to, thresholds, markers])

  const latest = points[points.length - 1]
  const caption = `${metricLong(metric)}: ${points.length} reading${points.length === 1 ? '' : 's'}` +
    (latest === undefined ? '' : `, latest ${`${latest[1]} ${unitLabel(unit)}`.trim()}`) +
    (thresholds.length === 0 ? '' : `; thresholds ${thresholds.map((t) => t.label).join(', ')}`) +
    (markers.length === 0 ? '' : `; ${markers.filter((m) => m.kind === 'opened').length} alert(s) opened in range`)
  return (
    <figure class="chart" data-metric={metric} data-points={points.length}>
      <figcaption>{caption}</figcaption>
      <div ref={box} class="plot" role="img" aria-label={caption} />
    </figure>
  )
}
