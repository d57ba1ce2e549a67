import Foundation
import OperandoCore
import OperandoVirtualCell
import Synchronization

/// A PalmSens MethodSCRIPT instrument (EmStat Pico by default) from the device side, wired to the
/// shared `VirtualCell` through `PalmSensCellModel`.
///
/// Written from shared/protocols/palmsens-methodscript.md and the public MethodSCRIPT_Examples
/// (scripts, mscript.py, instrument.py, README transcripts), independently of PalmSensDriver.
///
/// Host commands (one line each, `\n`): `t` → `t<family><version>` and a second line ending `*`;
/// `v` → `v<MethodSCRIPT version>`; `i` → `i<serial>`; `e` + script lines + empty line → `e`, then
/// the script's output in real time and an empty line when it has finished; `Z` → `Z` (a script
/// was running: it stops, open loops are closed, `on_finished:` runs, then the empty line) or
/// `Z!0006`. Other letters answer `<letter>!0001`. While a script runs, only `Z` is heard.
///
/// Output grammar: `M0000` … `*` around a measurement loop (the 4 hex digits are always 0000, as
/// in the only public transcript); with `nscans(n>1)` each scan sits between `C<scan hex4>` and
/// `-`; `L` … `+` around `loop`; `T<text>` from `send_string`; `P<pkg>` packages; `!XXXX` or
/// `!XXXX: Line N, Col 1` errors (see `MethodScriptError`); the empty line ends a run.
///
/// Time: device seconds = host seconds since construction × `timeScale`. Measurement loops emit
/// at their own schedule on that clock (a clock that jumps is caught up at once); every script
/// instruction costs `instructionSeconds`, so a busy `loop` advances time and can be aborted.
public final class PalmSensSimulator: @unchecked Sendable {
    public let family: String
    public let serialNumber: String
    public let firmwareVersion = "1.4"
    public let methodScriptVersion = "1.8"
    /// Device seconds per host second.
    public let timeScale: Double
    /// Scripts longer than this (bytes, including newlines) are refused with `!4006`.
    public let maxScriptBytes: Int
    public let instructionSeconds = 20e-6

    private let clock: any HostClock
    private let origin: HostInstant
    private var model: PalmSensCellModel
    private var noise: NoiseSource
    private let shared = Mutex(Shared())

    private struct Shared {
        var gpioInputs: UInt32 = 0xFF
        var gpioOutputs: UInt32 = 0
        var running = false
    }

    public init(
        cell: VirtualCell, clock: any HostClock, family: String = "espico", serialNumber: String = "PSSIM0001",
        seed: UInt64 = 1, timeScale: Double = 1, model: PalmSensCellModel.Parameters = PalmSensCellModel.Parameters(),
        maxScriptBytes: Int = 16_384
    ) {
        self.family = family
        self.serialNumber = serialNumber
        self.clock = clock
        self.origin = clock.now()
        self.timeScale = timeScale
        self.maxScriptBytes = maxScriptBytes
        self.model = PalmSensCellModel(cell: cell, parameters: model)
        self.noise = NoiseSource(seed: seed)
        ranges = PalmSensCurrentRanges.forFamily(family)
        rangePos = ranges.position(covering: 100e-6)
        autoMin = 0
        autoMax = ranges.ranges.count - 1
    }

    // MARK: Hooks for tests and the simulation harness

    /// Drives the GPIO input pins (bits of pins configured as inputs are read from here).
    public func setGPIOInputs(_ bits: UInt32) { shared.withLock { $0.gpioInputs = bits } }
    /// The GPIO output pins as the script last set them.
    public var gpioOutputs: UInt32 { shared.withLock { $0.gpioOutputs } }
    /// Whether a script is executing.
    public var isRunning: Bool { shared.withLock { $0.running } }

    // MARK: Serving

    private var input: [UInt8] = []
    private var scriptLines: [String]?
    private var scriptBytes = 0
    private var out = ""

    /// Serves the device end of `link` until `shouldStop` returns true or the link goes away.
    public func serve(_ link: any ByteStreamTransport, shouldStop: () -> Bool) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !shouldStop() {
            do {
                let timeout: Duration = run != nil ? .milliseconds(1) : .milliseconds(10)
                let read = try buffer.withUnsafeMutableBytes { try link.read(into: $0, timeout: timeout) }
                for byte in buffer[0..<read.count] { receive(byte) }
                pump()
                if !out.isEmpty {
                    let text = out
                    out = ""
                    try link.write(text, timeout: .seconds(10))
                }
            } catch {
                return
            }
        }
    }

    private func receive(_ byte: UInt8) {
        guard byte == UInt8(ascii: "\n") else {
            if input.count < 4096 { input.append(byte) }
            return
        }
        var line = String(decoding: input, as: UTF8.self)
        input.removeAll(keepingCapacity: true)
        if line.hasSuffix("\r") { line.removeLast() }
        if scriptLines != nil {
            receiveScriptLine(line)
            return
        }
        if run != nil {
            if line == "Z" { abort() }
            return
        }
        switch line {
        case "": return
        case "t": emit("t\(family)\(firmwareVersion)"); emit("#Dec 15 2025 12:00:00*")
        case "v": emit("v\(methodScriptVersion)")
        case "i": emit("i\(serialNumber)")
        case "e": scriptLines = []; scriptBytes = 0
        case "Z": emit("Z" + MethodScriptError(MethodScriptError.noScriptRunning).wire)
        default: emit(String(line.prefix(1)) + MethodScriptError(MethodScriptError.unknownHostCommand).wire)
        }
    }

    private func receiveScriptLine(_ line: String) {
        scriptBytes += line.utf8.count + 1
        if line.trimmingCharacters(in: .whitespaces).isEmpty && !line.isEmpty {
            scriptLines?.append(line)
            return
        }
        guard line.isEmpty else {
            scriptLines?.append(line)
            return
        }
        let lines = scriptLines ?? []
        scriptLines = nil
        emit("e")
        if scriptBytes > maxScriptBytes {
            emit(MethodScriptError(MethodScriptError.scriptTooLong).wire)
            return
        }
        do {
            let program = try MSProgram.parse(lines)
            start(program)
        } catch {
            emit(error.wire)
        }
    }

    private func emit(_ line: String) {
        out += line
        out += "\n"
    }

    // MARK: Device time and the cell

    private func deviceNow() -> Double { clock.now().seconds(since: origin) * timeScale }

    private var modelTime = 0.0
    private var cellOn = false
    private var galvanostatic = false
    private var setPotential = 0.0
    private var setCurrent = 0.0
    private var pgstatMode = 2
    private var ranges: PalmSensCurrentRanges
    private var rangePos: Int
    private var autoranging = false
    private var autoMin: Int
    private var autoMax: Int

    private var complianceAmps: Double { ranges.maximum }

    private var control: PalmSensCellModel.Control {
        guard cellOn else { return .openCircuit }
        if galvanostatic { return .current(max(-complianceAmps, min(complianceAmps, setCurrent))) }
        return .potential(setPotential, limit: complianceAmps)
    }

    private func integrate(to t: Double) {
        if t > modelTime {
            model.advance(seconds: t - modelTime, control: control)
            modelTime = t
        }
    }

    /// A current reading through the selected (or autoranged) range: value and `,1X,2XX` metadata.
    private func measureCurrent(_ trueCurrent: Double, extraStatus: Int = 0) -> (Double, String) {
        if autoranging {
            let best = ranges.position(covering: abs(trueCurrent) * 1.1)
            rangePos = min(autoMax, max(autoMin, best))
        }
        let range = ranges.ranges[rangePos]
        let fs = range.fullScale
        var i = trueCurrent + noise.gaussian() * (model.parameters.currentNoiseA + model.parameters.currentNoiseRelative * fs)
        var status = extraStatus
        if abs(trueCurrent) > fs {
            status |= 2
            i = trueCurrent > 0 ? fs : -fs
        } else if abs(trueCurrent) > 0.9 * fs {
            status |= 8
        }
        if abs(trueCurrent) < 0.01 * fs { status |= 4 }
        return (i, String(format: ",1%X,2%02X", status, range.index))
    }

    private func measurePotential() -> Double {
        model.electrodePotential + noise.gaussian() * model.parameters.potentialNoiseV
    }

    // MARK: Running a script

    private struct Value {
        var value: Double
        var type: String
        var isInteger: Bool
        var meta: String = ""
    }

    private final class MeasState {
        var times: [Double] = []  // sample times relative to t0
        var potentials: [Double] = []  // applied potential per sample (CA/LSV/CV/EIS dc)
        var frequencies: [Double] = []
        var scanEnds: Set<Int> = []  // sample indices that end a scan (nscans > 1)
        var scans = 1
        var t0 = 0.0
        var next = 0
        var pending = false
        var inScan = false
        var scanIndex = 0
    }

    private enum Frame {
        case loop(start: Int, end: Int)
        case meas(start: Int, end: Int, state: MeasState)
    }

    private struct Run {
        var program: MSProgram
        var pc = 0
        var t = 0.0
        var vars: [String: Value] = [:]
        var frames: [Frame] = []
        var timerZero = 0.0
        var package: [String]?
        var finishing = false
        var gpioOutMask: UInt32 = 0
        /// Set by `wait` and by a measurement loop waiting for its next sample.
        var notBefore = 0.0
    }

    private var run: Run?

    private func start(_ program: MSProgram) {
        let now = deviceNow()
        integrate(to: now)
        run = Run(program: program, t: now)
        shared.withLock { $0.running = true }
    }

    private func finish() {
        emit("")
        run = nil
        shared.withLock { $0.running = false }
    }

    private func fail(_ code: UInt16, line: Int) {
        emit(MethodScriptError(code, line: line).wire)
        integrate(to: max(modelTime, run?.t ?? modelTime))
        cellOn = false
        run = nil
        shared.withLock { $0.running = false }
    }

    private func closeFrames() {
        guard var r = run else { return }
        while let frame = r.frames.popLast() {
            switch frame {
            case .loop: emit("+")
            case .meas(_, _, let s):
                if s.inScan { emit("-") }
                emit("*")
            }
        }
        run = r
    }

    private func abort() {
        emit("Z")
        closeFrames()
        guard var r = run else { return }
        r.package = nil
        r.notBefore = 0
        r.t = min(r.t, deviceNow())
        if !r.finishing, let f = r.program.onFinished {
            r.pc = f + 1
            r.finishing = true
        } else {
            r.pc = r.program.instructions.count
        }
        run = r
    }

    private func value(_ operand: MSOperand, in r: Run) -> Value? {
        switch operand {
        case .literal(let v, let isInteger): return Value(value: v, type: "aa", isInteger: isInteger)
        case .variable(let name): return r.vars[name]
        }
    }

    private func compare(_ c: MSCondition, _ r: Run) -> Bool? {
        guard let a = value(c.lhs, in: r)?.value, let b = value(c.rhs, in: r)?.value else { return nil }
        switch c.op {
        case .eq: return a == b
        case .ne: return a != b
        case .lt: return a < b
        case .le: return a <= b
        case .gt: return a > b
        case .ge: return a >= b
        }
    }

    /// Executes as much of the script as the device clock allows.
    private func pump() {
        let now = deviceNow()
        guard run != nil else {
            integrate(to: now)
            return
        }
        var budget = 200_000
        while var r = run, budget > 0 {
            budget -= 1
            // Instructions may run a little ahead of the clock (their cost is nominal), but a
            // wait or a sample never completes before its time.
            if r.t > now + 0.05 || r.notBefore > now { break }
            guard r.pc < r.program.instructions.count else {
                integrate(to: r.t)
                finish()
                return
            }
            let instruction = r.program.instructions[r.pc]
            let line = instruction.line
            r.t += instructionSeconds
            r.pc += 1
            func need(_ o: MSOperand) -> Value? { value(o, in: r) }
            switch instruction.op {
            case .declare(let name):
                r.vars[name] = Value(value: 0, type: "aa", isInteger: false)
            case .store(let name, let o, let type):
                guard let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                r.vars[name] = Value(value: v.value, type: type, isInteger: v.isInteger)
            case .copy(let from, let to):
                guard let v = need(from) else { return fail(MethodScriptError.unknownVariable, line: line) }
                r.vars[to] = v
            case .arith(let kind, let name, let o):
                guard var a = r.vars[name], let b = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                switch kind {
                case .add: a.value += b.value
                case .sub: a.value -= b.value
                case .mul: a.value *= b.value
                case .div:
                    guard b.value != 0 else { return fail(MethodScriptError.invalidValueAtRuntime, line: line) }
                    a.value /= b.value
                    if a.isInteger { a.value = a.value.rounded(.towardZero) }
                }
                a.meta = ""
                r.vars[name] = a
            case .setPgstatMode(let o):
                guard let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                pgstatMode = Int(v.value)
                let fs = ranges.ranges[rangePos].fullScale
                let lo = ranges.ranges[autoMin].fullScale
                let hi = ranges.ranges[autoMax].fullScale
                ranges = PalmSensCurrentRanges.forFamily(family, highSpeed: pgstatMode == 3)
                rangePos = ranges.position(covering: fs)
                autoMin = ranges.position(covering: lo)
                autoMax = ranges.position(covering: hi)
            case .setMaxBandwidth:
                break
            case .setRange(let type, let o):
                guard let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                if type == "ba" {
                    guard v.value > 0 else { return fail(MethodScriptError.invalidValueAtRuntime, line: line) }
                    rangePos = ranges.position(covering: v.value)
                }
            case .setRangeMinmax:
                break
            case .setAutoranging(let type, let lo, let hi):
                guard let a = need(lo), let b = need(hi) else { return fail(MethodScriptError.unknownVariable, line: line) }
                if type == "ba" {
                    guard a.value > 0, b.value >= a.value else { return fail(MethodScriptError.invalidValueAtRuntime, line: line) }
                    autoMin = ranges.position(covering: a.value)
                    autoMax = ranges.position(covering: b.value)
                    autoranging = autoMax > autoMin
                    rangePos = min(autoMax, max(autoMin, rangePos))
                }
            case .setE(let o):
                guard let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                integrate(to: r.t)
                setPotential = v.value
                galvanostatic = false
            case .setI(let o):
                guard let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                integrate(to: r.t)
                setCurrent = v.value
                galvanostatic = true
            case .cellOn:
                integrate(to: r.t)
                cellOn = true
            case .cellOff:
                integrate(to: r.t)
                cellOn = false
            case .wait(let o):
                guard let v = need(o), v.value >= 0 else { return fail(MethodScriptError.invalidValueAtRuntime, line: line) }
                r.t += v.value
                r.notBefore = r.t
            case .timerStart:
                r.timerZero = r.t
            case .timerGet(let name):
                r.vars[name] = Value(value: r.t - r.timerZero, type: "eb", isInteger: false)
            case .pckStart:
                r.package = []
            case .pckAdd(let o):
                guard let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                guard r.package != nil else { return fail(MethodScriptError.invalidValueAtRuntime, line: line) }
                r.package!.append(v.type + Self.encode(v.value, isInteger: v.isInteger) + v.meta)
            case .pckEnd:
                guard let p = r.package else { return fail(MethodScriptError.invalidValueAtRuntime, line: line) }
                emit("P" + p.joined(separator: ";"))
                r.package = nil
            case .sendString(let text, let interpolate):
                emit("T" + (interpolate ? Self.interpolate(text, r.vars) : text))
            case .setGpioCfg(let mask, let mode):
                guard let m = need(mask), let d = need(mode) else { return fail(MethodScriptError.unknownVariable, line: line) }
                let bits = UInt32(truncatingIfNeeded: Int(m.value))
                if Int(d.value) == 1 { r.gpioOutMask |= bits } else { r.gpioOutMask &= ~bits }
            case .setGpio(let o):
                guard let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                let mask = r.gpioOutMask
                shared.withLock { $0.gpioOutputs = UInt32(truncatingIfNeeded: Int(v.value)) & mask }
            case .setGpioMask(let mask, let o):
                guard let m = need(mask), let v = need(o) else { return fail(MethodScriptError.unknownVariable, line: line) }
                let bits = UInt32(truncatingIfNeeded: Int(m.value)) & r.gpioOutMask
                let on = v.value != 0
                shared.withLock { $0.gpioOutputs = on ? ($0.gpioOutputs | bits) : ($0.gpioOutputs & ~bits) }
            case .getGpio(let name):
                let mask = r.gpioOutMask
                let bits = shared.withLock { ($0.gpioOutputs & mask) | ($0.gpioInputs & ~mask) }
                r.vars[name] = Value(value: Double(bits), type: "ec", isInteger: true)
            case .noop, .endIf:
                break
            case .onFinished:
                r.finishing = true
            case .loop(let c, let end):
                guard let go = compare(c, r) else { return fail(MethodScriptError.unknownVariable, line: line) }
                emit("L")
                if go {
                    r.frames.append(.loop(start: r.pc - 1, end: end))
                } else {
                    emit("+")
                    r.pc = end + 1
                }
            case .endLoop(let start):
                if case .loop(let c, let end) = r.program.instructions[start].op {
                    guard let go = compare(c, r) else { return fail(MethodScriptError.unknownVariable, line: line) }
                    if go {
                        r.pc = start + 1
                    } else {
                        emit("+")
                        r.frames.removeLast()
                        r.pc = end + 1
                    }
                } else {
                    r.pc = start
                    r.t -= instructionSeconds
                }
            case .breakLoop:
                while let frame = r.frames.popLast() {
                    if case .loop(_, let end) = frame {
                        emit("+")
                        r.pc = end + 1
                        break
                    }
                    if case .meas(_, let end, let s) = frame {
                        if s.inScan { emit("-") }
                        emit("*")
                        r.pc = end + 1
                        break
                    }
                }
            case .branch(let c, let next, let end, let isElseIf):
                if isElseIf {
                    r.pc = end + 1  // fell out of the previous body
                } else {
                    var target = r.pc - 1
                    var cond = c
                    var nextTarget = next
                    while true {
                        guard let go = compare(cond, r) else { return fail(MethodScriptError.unknownVariable, line: line) }
                        if go {
                            r.pc = target + 1
                            break
                        }
                        target = nextTarget
                        if case .branch(let c2, let n2, _, _) = r.program.instructions[target].op {
                            cond = c2
                            nextTarget = n2
                            continue
                        }
                        r.pc = target + 1  // else or endif
                        break
                    }
                }
            case .elseBranch(let end):
                r.pc = end + 1
            case .measLoop(let technique, let end):
                r.pc -= 1
                r.t -= instructionSeconds
                let header = r.pc
                let state: MeasState
                if case .meas(let s, _, let st)? = r.frames.last, s == header {
                    state = st
                } else {
                    guard let st = prepare(technique, r) else { return fail(MethodScriptError.invalidValueAtRuntime, line: line) }
                    st.t0 = r.t
                    emit("M0000")
                    r.frames.append(.meas(start: header, end: end, state: st))
                    state = st
                    configureControl(technique, state, r)
                }
                if !state.pending {
                    if state.inScan && state.scanEnds.contains(state.next - 1) {
                        emit("-")
                        state.inScan = false
                    }
                    guard state.next < state.times.count else {
                        integrate(to: r.t)
                        emit("*")
                        r.frames.removeLast()
                        r.pc = end + 1
                        r.t += instructionSeconds
                        break
                    }
                    state.pending = true
                }
                let ts = state.t0 + state.times[state.next]
                if ts > now {
                    r.notBefore = ts
                    r.t = max(r.t, ts)
                    break
                }
                if state.scans > 1 && !state.inScan {
                    emit(String(format: "C%04X", state.scanIndex))
                    state.scanIndex += 1
                    state.inScan = true
                }
                let late = r.t > ts + 1e-3
                sample(technique, state, ts, late: late, &r)
                state.next += 1
                state.pending = false
                r.t = max(r.t, ts) + instructionSeconds
                r.pc = header + 1
            }
            if run != nil { run = r }
        }
    }

    /// Schedules a measurement loop's samples. Nil when its arguments are out of bounds.
    private func prepare(_ technique: MSTechnique, _ r: Run) -> MeasState? {
        func v(_ o: MSOperand) -> Double? { value(o, in: r)?.value }
        let s = MeasState()
        switch technique {
        case .ocp(_, let interval, let run), .ca(_, _, _, let interval, let run), .cp(_, _, _, let interval, let run):
            guard let dt = v(interval), let total = v(run), dt > 0, total >= 0 else { return nil }
            let n = Int((total / dt + 1e-9).rounded(.down))
            guard n <= 10_000_000 else { return nil }
            s.times = (0..<n).map { Double($0 + 1) * dt }
            if case .ca(_, _, let e, _, _) = technique, let e = v(e) { s.potentials = Array(repeating: e, count: n) }
        case .lsv(_, _, let begin, let end, let step, let rate):
            guard let b = v(begin), let e = v(end), let st = v(step), let sr = v(rate), st > 0, sr > 0 else { return nil }
            s.potentials = Self.walk(from: b, to: e, step: st, includeStart: true)
            let dt = st / sr
            s.times = s.potentials.indices.map { Double($0 + 1) * dt }
        case .cv(_, _, let begin, let v1, let v2, let step, let rate, let scans):
            guard let b = v(begin), let a1 = v(v1), let a2 = v(v2), let st = v(step), let sr = v(rate), st > 0, sr > 0 else { return nil }
            var all: [Double] = []
            for k in 0..<scans {
                var scan = Self.walk(from: b, to: a1, step: st, includeStart: true)
                scan += Self.walk(from: a1, to: a2, step: st, includeStart: false)
                let back = Self.walk(from: a2, to: b, step: st, includeStart: false)
                scan += k == scans - 1 ? back : Array(back.dropLast())
                all += scan
                s.scanEnds.insert(all.count - 1)
            }
            s.scans = scans
            s.potentials = all
            let dt = st / sr
            s.times = all.indices.map { Double($0 + 1) * dt }
        case .eis(_, _, _, _, let fStart, let fEnd, let points, let dc):
            guard let f0 = v(fStart), let f1 = v(fEnd), let n = v(points), let e = v(dc), f0 > 0, f1 > 0, n >= 1 else { return nil }
            let count = Int(n)
            s.frequencies = (0..<count).map { k in
                count == 1 ? f0 : f0 * pow(f1 / f0, Double(k) / Double(count - 1))
            }
            var t = 0.0
            s.times = s.frequencies.map { f in
                t += max(0.05, 3 / f)
                return t
            }
            s.potentials = Array(repeating: e, count: count)
        }
        return s
    }

    private func configureControl(_ technique: MSTechnique, _ s: MeasState, _ r: Run) {
        integrate(to: r.t)
        switch technique {
        case .ocp: cellOn = false
        case .cp(_, _, let i, _, _):
            setCurrent = value(i, in: r)?.value ?? 0
            galvanostatic = true
            cellOn = true
        default:
            galvanostatic = false
            cellOn = true
            if let e = s.potentials.first { setPotential = e }
        }
    }

    private func sample(_ technique: MSTechnique, _ s: MeasState, _ ts: Double, late: Bool, _ r: inout Run) {
        let k = s.next
        if k < s.potentials.count, !galvanostatic, cellOn {
            integrate(to: max(modelTime, ts - (k == 0 ? ts - s.t0 : s.times[k] - s.times[k - 1])))
            setPotential = s.potentials[k]
        }
        integrate(to: ts)
        let timing = late ? 1 : 0
        switch technique {
        case .ocp(let e, _, _):
            r.vars[e] = Value(value: measurePotential(), type: "ab", isInteger: false, meta: timing != 0 ? ",11" : "")
        case .cp(let e, let i, _, _, _):
            r.vars[e] = Value(value: measurePotential(), type: "ab", isInteger: false)
            let (cur, meta) = measureCurrent(model.current, extraStatus: timing)
            r.vars[i] = Value(value: cur, type: "ba", isInteger: false, meta: meta)
        case .ca(let e, let i, _, _, _), .lsv(let e, let i, _, _, _, _), .cv(let e, let i, _, _, _, _, _, _):
            r.vars[e] = Value(value: setPotential, type: "da", isInteger: false)
            let (cur, meta) = measureCurrent(model.current, extraStatus: timing)
            r.vars[i] = Value(value: cur, type: "ba", isInteger: false, meta: meta)
        case .eis(let f, let zr, let zi, let amplitude, _, _, _, _):
            let freq = s.frequencies[k]
            let z = model.impedance(frequency: freq)
            let rel = model.parameters.impedanceNoiseRelative
            let mag = (z.real * z.real + z.imaginary * z.imaginary).squareRoot()
            let amp = value(amplitude, in: r)?.value ?? 0.01
            let (_, meta) = measureCurrent(amp * 2.0.squareRoot() / max(mag, 1e-12))
            r.vars[f] = Value(value: freq, type: "dc", isInteger: false)
            r.vars[zr] = Value(value: z.real + noise.gaussian() * rel * mag, type: "cc", isInteger: false, meta: meta)
            r.vars[zi] = Value(value: z.imaginary + noise.gaussian() * rel * mag, type: "cd", isInteger: false)
        }
    }

    /// Potentials from `a` to `b` in steps of `step` (the last one is `b` if it falls on the grid).
    static func walk(from a: Double, to b: Double, step: Double, includeStart: Bool) -> [Double] {
        let n = Int((abs(b - a) / step + 1e-9).rounded(.down))
        let sign: Double = b >= a ? 1 : -1
        return ((includeStart ? 0 : 1)...max(includeStart ? 0 : 1, n)).compactMap { k in
            k > n ? nil : a + sign * Double(k) * step
        }
    }

    // MARK: Encoding

    private static let prefixes: [(Character, Double)] = [
        ("a", 1e-18), ("f", 1e-15), ("p", 1e-12), ("n", 1e-9), ("u", 1e-6), ("m", 1e-3), (" ", 1),
        ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15), ("E", 1e18),
    ]

    /// 7 hex digits of value + 2^27 and an SI prefix: the finest prefix at which the value fits.
    static func encode(_ value: Double, isInteger: Bool) -> String {
        if value.isNaN { return "     nan" }
        let limit = Double(1 << 27) - 1
        func hex(_ n: Int) -> String {
            let s = String(n + (1 << 27), radix: 16, uppercase: true)
            return String(repeating: "0", count: max(0, 7 - s.count)) + s
        }
        if isInteger {
            return hex(Int(max(-limit, min(limit, value.rounded())))) + "i"
        }
        if value == 0 { return hex(0) + " " }
        for (c, f) in prefixes {
            let n = (value / f).rounded()
            if abs(n) <= limit { return hex(Int(n)) + String(c) }
        }
        return hex(Int(value > 0 ? limit : -limit)) + "E"
    }

    private static func interpolate(_ text: String, _ vars: [String: Value]) -> String {
        var result = ""
        var name: String?
        for ch in text {
            if var n = name {
                if ch == "}" {
                    if let v = vars[n] {
                        result += v.isInteger ? String(Int(v.value)) : String(format: "%g", v.value)
                    }
                    name = nil
                } else {
                    n.append(ch)
                    name = n
                }
            } else if ch == "{" {
                name = ""
            } else {
                result.append(ch)
            }
        }
        return result
    }
}
