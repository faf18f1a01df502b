import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { parse } from 'yaml'
import { createTestPki } from '../helpers/certificates.ts'

// deploy/haproxy.cfg (issue 16): HAProxy's own parser checks it (`haproxy -c`, Debian's
// `haproxy` package), and it must agree with docker-compose.yml: the servers are the compose
// services, MQTT carries the PROXY protocol the Vigils expect, and the address they trust is HAProxy's.
const run = promisify(execFile)
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const cfgText = await fs.readFile(path.join(root, 'deploy/haproxy.cfg'), 'utf8')
const compose = parse(await fs.readFile(path.join(root, 'docker-compose.yml'), 'utf8'), { merge: true })
const haproxy = await run('haproxy', ['-v']).then(() => true, () => false)

/** `haproxy -c` on a copy of the file whose TLS directory is a throwaway one. */
async function check (text: string): Promise<{ ok: boolean, output: string }> {
  const pki = await createTestPki()
  try {
    const file = path.join(pki.dir, 'haproxy.cfg')
    await fs.writeFile(file, text.replaceAll('/usr/local/etc/haproxy/tls/', `${pki.dir}/`))
    return await run('haproxy', ['-c', '-f', file]).then((r) => ({ ok: true, output: r.stdout + r.stderr }), (err) => ({ ok: false, output: `${err.stdout}${err.stderr}` }))
  } finally {
    await pki.remove()
  }
}

t.test('haproxy -c accepts deploy/haproxy.cfg, and refuses a broken one', { skip: haproxy ? false : 'haproxy is not installed (apt-get install haproxy)' }, async (t) => {
  const good = await check(cfgText)
  t.ok(good.ok, good.output)
  t.match(good.output, /Configuration file is valid/)
  const broken = await check(cfgText.replace('balance leastconn', 'balance fastest'))
  t.notOk(broken.ok, 'an unknown balance algorithm is refused')
})

t.test('the proxy and the compose file agree', async (t) => {
  const services = Object.keys(compose.services).filter((name) => name.startsWith('vigil-'))
  t.same(services, ['vigil-1', 'vigil-2'])
  for (const backend of ['vigil_mqtt', 'vigil_mqtts', 'vigil_api']) {
    const block = cfgText.split(`\nbackend ${backend}\n`)[1]!.split(/\n(?:backend|frontend) /)[0]!
    const servers = [...block.matchAll(/^\s+server (\S+) (\S+):(\d+)(.*)$/gm)]
    t.same(servers.map((m) => m[2]), services, `${backend} balances every Vigil`)
    for (const m of servers) {
      t.match(m[4], /\bcheck\b/, `${backend}/${m[1]} is health-checked`)
      if (backend !== 'vigil_api') t.match(m[4], /send-proxy/, `${backend}/${m[1]} sends the PROXY protocol`)
    }
  }
  t.match(cfgText, /option httpchk GET \/healthz/)
  for (const name of services) {
    const env = compose.services[name].environment
    t.equal(env.MQTT_PROXY_PROTOCOL, 'true', `${name} expects the PROXY protocol`)
    t.equal(env.TRUST_PROXY, compose.services.haproxy.networks.default.ipv4_address, `${name} trusts HAProxy's address and only it`)
    t.same(compose.services[name].ports, undefined, `${name} publishes nothing itself`)
  }
})
