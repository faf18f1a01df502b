import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Ajv } from 'ajv'
import t from 'tap'
import { parse } from 'yaml'

// Issue 16: docker-compose.yml checked in CI without a Docker engine: against the Compose
// Specification's JSON schema (vendored in compose-spec/, see its README), plus what the schema
// cannot know: the files it mounts exist, and the dashboard asks for metrics Vigil exposes.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const here = path.dirname(fileURLToPath(import.meta.url))
const composeText = fs.readFileSync(path.join(root, 'docker-compose.yml'), 'utf8')
// merge: true: the two Vigil services share one definition through YAML merge keys, as Compose reads them.
const compose = parse(composeText, { merge: true })

function validator () {
  const { $schema, ...schema } = JSON.parse(fs.readFileSync(path.join(here, 'compose-spec/compose-spec.json'), 'utf8'))
  // The file names draft-07 as https://json-schema.org/draft-07/schema, which ajv knows under
  // its http://…# spelling; ajv's Ajv class is draft-07, so the name is dropped, not the draft.
  if ($schema !== 'https://json-schema.org/draft-07/schema') throw new Error(`compose-spec.json is now ${String($schema)}: pick the ajv class for it`)
  // strict: false: the schema uses keywords ajv's strict mode refuses (e.g. `deprecated`).
  return new Ajv({ strict: false, allErrors: true }).compile(schema)
}

t.test('docker-compose.yml is valid against the Compose Specification schema', async (t) => {
  const validate = validator()
  const ok = validate(compose)
  t.ok(ok, JSON.stringify(validate.errors?.slice(0, 5)))
})

t.test('the schema check is not a rubber stamp: a wrong compose file fails it', async (t) => {
  const validate = validator()
  const typo = structuredClone(compose)
  typo.services['vigil-1'].restart_policy = 'always'
  t.notOk(validate(typo), 'an unknown service key is refused')
  const badPorts = structuredClone(compose)
  badPorts.services.haproxy.ports = { tcp: 8883 }
  t.notOk(validate(badPorts), 'ports must be a list')
})

t.test('what the deployment publishes and mounts', async (t) => {
  t.same(compose.services.haproxy.ports, ['8883:8883', '127.0.0.1:3000:3000'], 'through HAProxy: MQTT over TLS to all; the API on loopback only; no plain 1883')
  t.notOk(composeText.includes('"1883:1883"'), 'plain MQTT is not published')
  const data = new Set<string>()
  for (const name of ['vigil-1', 'vigil-2']) {
    const vigil = compose.services[name]
    t.same(vigil.ports, undefined, `${name} publishes nothing itself (HAProxy does)`)
    t.equal(vigil.environment.VIGIL_ALERT_RULES, '/etc/vigil/rules/alert-rules.yaml')
    t.ok(vigil.volumes.includes('vigil-rules:/etc/vigil/rules'), 'the rules directory is a writable volume both processes mount (PUT /v1/alert-rules)')
    data.add(vigil.volumes.find((v: string) => v.endsWith(':/var/lib/vigil')))
    t.equal(vigil.environment.REDIS_URL, 'redis://redis:6379', `${name} joins the cluster bus`)
  }
  t.equal(data.size, 2, 'each Vigil has its own data volume (its spool, its data directory lock)')
  for (const service of Object.values(compose.services) as Array<{ volumes?: string[] }>) {
    for (const volume of service.volumes ?? []) {
      const source = volume.split(':')[0]!
      if (source.startsWith('./')) t.ok(fs.existsSync(path.join(root, source)), `${source} exists in the repository`)
    }
  }
  const dockerfile = fs.readFileSync(path.join(root, 'Dockerfile'), 'utf8')
  t.match(dockerfile, /^FROM node:24-/m, 'the image is on the Active LTS')
  t.match(dockerfile, /cp config\/alert-rules\.yaml \/etc\/vigil\/rules\//, 'the image seeds the rules volume')
})

t.test('the fleet dashboard asks only for metrics Vigil registers', async (t) => {
  const sources = ['observability/metrics.ts', 'alerts/engine/alert-engine.ts', 'alerts/lifecycle/alert-metrics.ts']
    .map((file) => fs.readFileSync(path.join(root, file), 'utf8')).join('\n')
  const registered = new Set([...sources.matchAll(/'(vigil_[a-z0-9_]+)'/g)].map((m) => m[1]!))
  t.ok(registered.has('vigil_ingest_durable_seconds'), 'the metric names were found in the sources')
  const dashboard = JSON.parse(fs.readFileSync(path.join(root, 'deploy/grafana/dashboards/vigil-fleet.json'), 'utf8'))
  const asked = new Set<string>()
  for (const panel of dashboard.panels) {
    for (const target of panel.targets) for (const m of (target.expr as string).matchAll(/vigil_[a-z0-9_]+/g)) asked.add(m[0])
  }
  t.ok(asked.size >= 10, `${asked.size} metrics on the dashboard`)
  for (const name of asked) t.ok(registered.has(name.replace(/_(bucket|sum|count)$/, '')), `${name} is registered`)
  const datasources = parse(fs.readFileSync(path.join(root, 'deploy/grafana/provisioning/datasources/vigil.yaml'), 'utf8'))
  t.same(datasources.datasources.map((d: { type: string }) => d.type).sort(), ['grafana-postgresql-datasource', 'influxdb', 'prometheus'])
})
