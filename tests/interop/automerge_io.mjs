// Reads and writes Automerge documents with the JavaScript implementation, so
// the Python tests can check that both sides read the same values.
//
//   node automerge_io.mjs read FILE        print the document in FILE
//   node automerge_io.mjs write FILE       build a sample document, save it to
//                                          FILE, and print it
//   node automerge_io.mjs edit IN OUT      load IN, change it, save it to OUT,
//                                          and print it
//
// A document is printed as one JSON object: {"heads": [hex, ...] sorted,
// "value": tagged}. In the tagged form bytes are {"$bytes": hex}, dates are
// {"$ts": milliseconds} and integers that JavaScript reads as BigInt are
// {"$int": decimal}; text and immutable strings are both plain strings and
// counters are numbers, which is how the Python binding reads them.

import { readFileSync, writeFileSync } from "node:fs"
import * as A from "@automerge/automerge"

function tagged(value) {
  if (value === null || value === undefined) return null
  if (value instanceof Uint8Array) {
    return { $bytes: Buffer.from(value).toString("hex") }
  }
  if (value instanceof Date) return { $ts: value.getTime() }
  if (typeof value === "bigint") return { $int: value.toString() }
  if (A.isImmutableString(value)) return value.toString()
  if (A.isCounter(value)) return value.value
  if (Array.isArray(value)) return value.map(tagged)
  if (typeof value === "object") {
    const out = {}
    for (const key of Object.keys(value).sort()) out[key] = tagged(value[key])
    return out
  }
  return value
}

function show(doc) {
  const heads = [...A.getHeads(doc)].sort()
  process.stdout.write(JSON.stringify({ heads, value: tagged(doc) }) + "\n")
}

function sample() {
  // Fixed actor and time, so the same document comes out on every run.
  const actor = "0123456789abcdef0123456789abcdef"
  let doc = A.init({ actor })
  doc = A.change(doc, { time: 0 }, (d) => {
    d.text = "collaborative text, ünïcödé ✓"
    d.plain = new A.ImmutableString("immutable string")
    d.int = -42
    d.big = 9007199254740991
    d.huge = -(2n ** 63n)
    d.float = 0.1
    d.yes = true
    d.no = false
    d.nothing = null
    d.blob = new Uint8Array([0, 1, 2, 254, 255])
    d.hits = new A.Counter(7)
    d.unsigned = new A.Uint(5)
    d.when = new Date(1700000000123)
    d.nested = { list: [1, "two", { three: 3 }, [], {}], empty: {} }
    d.jobs = [{ name: "build", argv: ["make", "-j2"] }]
  })
  return doc
}

const [command, ...args] = process.argv.slice(2)
if (command === "read" && args.length === 1) {
  show(A.load(readFileSync(args[0])))
} else if (command === "write" && args.length === 1) {
  const doc = sample()
  writeFileSync(args[0], A.save(doc))
  show(doc)
} else if (command === "edit" && args.length === 2) {
  let doc = A.load(readFileSync(args[0]))
  doc = A.change(doc, { time: 0 }, (d) => {
    d.from_js = { ok: true, n: 3 }
    if (Array.isArray(d.items)) d.items.push("appended in js")
  })
  writeFileSync(args[1], A.save(doc))
  show(doc)
} else {
  process.stderr.write(
    "usage: automerge_io.mjs read FILE | write FILE | edit IN OUT\n",
  )
  process.exit(2)
}
