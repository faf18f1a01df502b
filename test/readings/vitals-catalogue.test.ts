import t from 'tap'
import { PayloadRejection } from '../../readings/reading.ts'
import {
  listMetrics,
  lookupMetric,
  lookupMetricByLoinc,
  normalizeValue,
  vitalsCatalogue
} from '../../readings/vitals-catalogue.ts'

function reasonOf (run: () => unknown): string {
  try {
    run()
  } catch (error) {
    if (error instanceof PayloadRejection) return error.reason
    throw error
  }
  return 'accepted'
}

t.test('DESIGN.md codes and canonical units', async (t) => {
  const expected: Array<[string, string, string]> = [
    ['heart_rate', '8867-4', '/min'],
    ['resp_rate', '9279-1', '/min'],
    ['spo2', '2708-6', '%'],
    ['body_temp', '8310-5', 'Cel'],
    ['bp_systolic', '8480-6', 'mm[Hg]'],
    ['bp_diastolic', '8462-4', 'mm[Hg]'],
    ['body_weight', '29463-7', 'kg'],
    ['glucose', '2339-0', 'mg/dL']
  ]
  for (const [metric, loinc, unit] of expected) {
    const entry = lookupMetric(metric)
    t.equal(entry?.loinc, loinc, `${metric} LOINC`)
    t.equal(entry?.unit, unit, `${metric} unit`)
    t.equal(lookupMetricByLoinc(loinc)?.name, metric, `${loinc} resolves to ${metric}`)
  }
})

t.test('every entry is consistent', async (t) => {
  for (const row of listMetrics()) {
    const entry = lookupMetric(row.metric)
    t.ok(entry, row.metric)
    t.ok(row.min < row.max, `${row.metric} range`)
    t.ok(row.acceptedUnits.includes(row.unit), `${row.metric} accepts its canonical unit`)
    t.same(entry?.units[row.unit], { scale: 1 }, `${row.metric} canonical unit is identity`)
    if (entry?.derived === true) continue
    t.same(normalizeValue(row.metric, row.min, row.unit), { value: row.min, unit: row.unit }, `${row.metric} min inclusive`)
    t.same(normalizeValue(row.metric, row.max, row.unit), { value: row.max, unit: row.unit }, `${row.metric} max inclusive`)
  }
  t.equal(listMetrics().length, Object.keys(vitalsCatalogue).length)
})

t.test('listMetrics returns copies that can be serialised', async (t) => {
  const rows = listMetrics()
  rows[0]?.acceptedUnits.push('furlong')
  t.notOk(listMetrics()[0]?.acceptedUnits.includes('furlong'))
  t.same(JSON.parse(JSON.stringify(rows.slice(1))), rows.slice(1))
})

t.test('SpO2 by pulse oximetry LOINC is an alias', async (t) => {
  t.equal(lookupMetricByLoinc('59408-5')?.name, 'spo2')
  t.equal(lookupMetricByLoinc('59408-5')?.loinc, '2708-6')
})

t.test('unit conversions', async (t) => {
  const cases: Array<[metric: string, value: number, unit: string, expected: number, canonical: string]> = [
    ['body_temp', 98.6, '[degF]', 37, 'Cel'],
    ['body_temp', 98.6, 'degF', 37, 'Cel'],
    ['body_temp', 98.6, '°F', 37, 'Cel'],
    ['body_temp', 98.6, 'F', 37, 'Cel'],
    ['body_temp', 100.4, '[degF]', 38, 'Cel'],
    ['body_temp', 99.5, '°F', 37.5, 'Cel'],
    ['body_temp', 36.6, 'Cel', 36.6, 'Cel'],
    ['body_temp', 36.6, 'degC', 36.6, 'Cel'],
    ['body_temp', 36.6, '°C', 36.6, 'Cel'],
    ['body_temp', 36.6, 'C', 36.6, 'Cel'],
    ['body_weight', 180, 'lb', 81.647, 'kg'],
    ['body_weight', 180, '[lb_av]', 81.647, 'kg'],
    ['body_weight', 180, 'lbs', 81.647, 'kg'],
    ['body_weight', 72500, 'g', 72.5, 'kg'],
    ['body_weight', 72.5, 'kg', 72.5, 'kg'],
    ['glucose', 5.5, 'mmol/L', 99.1, 'mg/dL'],
    ['glucose', 5.5, 'mmol/l', 99.1, 'mg/dL'],
    ['glucose', 99, 'mg/dl', 99, 'mg/dL'],
    ['heart_rate', 72, 'bpm', 72, '/min'],
    ['heart_rate', 72, '{beats}/min', 72, '/min'],
    ['heart_rate', 72, 'beats/min', 72, '/min'],
    ['heart_rate', 72, 'beat/min', 72, '/min'],
    ['heart_rate', 72, '1/min', 72, '/min'],
    ['resp_rate', 16, '{breaths}/min', 16, '/min'],
    ['resp_rate', 16, 'br/min', 16, '/min'],
    ['spo2', 97, '%', 97, '%'],
    ['bp_systolic', 120, 'mmHg', 120, 'mm[Hg]'],
    ['bp_systolic', 16, 'kPa', 120, 'mm[Hg]'],
    ['bp_diastolic', 80, 'mm[Hg]', 80, 'mm[Hg]'],
    ['body_height', 1.75, 'm', 175, 'cm'],
    ['body_height', 70, '[in_i]', 177.8, 'cm'],
    ['bmi', 24.2, 'kg/m2', 24.2, 'kg/m2']
  ]
  for (const [metric, value, unit, expected, canonical] of cases) {
    t.same(normalizeValue(metric, value, unit), { value: expected, unit: canonical }, `${value} ${unit} ${metric}`)
  }
})

t.test('converted values keep a fixed number of decimals', async (t) => {
  for (let tenths = 900; tenths <= 1100; tenths++) {
    const { value } = normalizeValue('body_temp', tenths / 10, '[degF]')
    if (Number(value.toFixed(2)) !== value) t.fail(`${tenths / 10} °F gave ${value}`)
  }
  for (let pounds = 2; pounds <= 1000; pounds++) {
    const { value } = normalizeValue('body_weight', pounds, 'lb')
    if (Number(value.toFixed(3)) !== value) t.fail(`${pounds} lb gave ${value}`)
  }
  t.pass('all rounded')
})

t.test('rejections', async (t) => {
  const cases: Array<[metric: string, value: number, unit: string, reason: string]> = [
    ['pulse', 72, '/min', 'unknown_metric'],
    ['', 72, '/min', 'unknown_metric'],
    ['HEART_RATE', 72, '/min', 'unknown_metric'],
    ['8867-4', 72, '/min', 'unknown_metric'],
    ['__proto__', 72, '/min', 'unknown_metric'],
    ['constructor', 72, '/min', 'unknown_metric'],
    ['toString', 72, '/min', 'unknown_metric'],
    ['hasOwnProperty', 72, '/min', 'unknown_metric'],
    ['heart_rate', 72, 'Cel', 'unit_unsupported'],
    ['heart_rate', 72, '', 'unit_unsupported'],
    ['spo2', 0.97, '1', 'unit_unsupported'],
    ['body_temp', 310, 'K', 'unit_unsupported'],
    ['body_temp', 37, 'cel', 'unit_unsupported'],
    ['body_temp', 37, '__proto__', 'unit_unsupported'],
    ['body_temp', 37, 'constructor', 'unit_unsupported'],
    ['glucose', 99, 'MG/DL', 'unit_unsupported'],
    ['heart_rate', 19, '/min', 'value_out_of_range'],
    ['heart_rate', 301, 'bpm', 'value_out_of_range'],
    ['heart_rate', -72, '/min', 'value_out_of_range'],
    ['heart_rate', Number.NaN, '/min', 'value_out_of_range'],
    ['heart_rate', Number.POSITIVE_INFINITY, '/min', 'value_out_of_range'],
    ['spo2', 101, '%', 'value_out_of_range'],
    ['spo2', 49, '%', 'value_out_of_range'],
    ['body_temp', 114, '[degF]', 'value_out_of_range'],
    ['body_temp', 37, 'K', 'unit_unsupported'],
    ['body_temp', 98.6, 'Cel', 'value_out_of_range'],
    ['body_weight', 0.4, 'kg', 'value_out_of_range'],
    ['body_weight', 1200, 'lb', 'value_out_of_range'],
    ['glucose', 100, 'mmol/L', 'value_out_of_range'],
    ['bp_diastolic', 201, 'mmHg', 'value_out_of_range']
  ]
  for (const [metric, value, unit, reason] of cases) {
    t.equal(reasonOf(() => normalizeValue(metric, value, unit)), reason, `${metric} ${value} ${JSON.stringify(unit)}`)
  }
})

t.test('prototype names never resolve', async (t) => {
  for (const name of ['__proto__', 'constructor', 'toString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf']) {
    t.equal(lookupMetric(name), undefined, name)
    t.equal(lookupMetricByLoinc(name), undefined, name)
  }
})

t.test('derived metrics (the engine\'s NEWS2 score) are never accepted from a device', async (t) => {
  let refused: unknown = null
  try {
    normalizeValue('news2_score', 3, '{score}')
  } catch (err) {
    refused = err
  }
  t.ok(refused instanceof PayloadRejection && refused.reason === 'unknown_metric', 'refused as a metric devices cannot send')
})
