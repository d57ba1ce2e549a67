import Foundation
import OperandoCore
import OperandoVirtualCell
import Synchronization

/// A simulated Amptek X-123SDD (a DP5 pulse processor with a PC5 supply and a silicon drift
/// detector) speaking the DP5 packet protocol from the device side, written from the DP5
/// Programmer's Guide independently of `AmptekDriver`.
///
/// It is an MCA: while enabled it accumulates counts into `MCAC` channels (default 1024) from
/// the spectrum of the shared virtual cell (`AmptekSpectrumModel`: Mn, Co, Ni K lines whose Ni
/// part follows the state of charge), with Poisson counting noise and non-paralyzable dead
/// time (τ = 2 × TPEA + TFLA). Real time runs on the device clock (`deviceClock`, ms ticks);
/// accumulation (live) time is real time less dead time; `PRET` stops the MCA when the
/// accumulation time reaches it and sets the preset flag (`PRER` and `PREC` likewise).
///
/// Answers as the guide describes: ACK 01 for a packet without sync bytes (packet links only:
/// over a byte stream bytes before a sync pair are ignored), 02 for an unknown packet ID, 03
/// for a LEN that does not fit, 04 for a bad checksum, 05 (bad parameter) and 07 (unrecognised
/// command) with the offending command echoed for text configuration, 0A for scope data, 0D
/// while `busy`. Text configuration `20 02` is kept over a `powerCycle()`, `20 04` is not.
/// The real device stalls 80–400 ms while it writes its flash after `20 02`; this one does not.
///
/// The status reports device type 0 (DP5) with a PC5 of negative polarity (an SDD), HV from
/// HVSE (factory -260 V), the detector at the TECS setpoint (220 K), the board near 30 °C,
/// firmware 6.08.00 and FPGA 6.12. The serial number is the trailing digits of `serialNumber`
/// (a stable hash below 10⁸ when it has none).
public final class AmptekSimulator: @unchecked Sendable {
    public let serialNumber: String
    /// The status's serial number field.
    public let serialNumberValue: UInt32
    public let deviceClock: SimulatedDeviceClock
    private let cell: VirtualCell
    private let clock: any HostClock
    private let lock = Mutex(())

    // Guarded by `lock`.
    private var noise: NoiseSource
    private var saved = SimConfiguration()
    private var config = SimConfiguration()
    private var model = AmptekSpectrumModel()
    private var scale = 1.0
    private var isBusy = false
    private let spectrum: UnsafeMutableBufferPointer<UInt32>
    private let writer = SimPacketWriter()
    private var enabled = false
    private var presetTimeReached = false
    private var presetCountReached = false
    private var firstStatusSinceReboot = true
    private var fastCount: UInt64 = 0
    private var slowCount: UInt64 = 0
    /// Live time since the last clear, ns.
    private var liveNs = 0.0
    /// Real-time ms ticks of earlier enabled stretches since the last clear.
    private var realTicks: Int64 = 0
    private var enabledSinceTick: Int64 = 0
    private var advancedToTick: Int64 = 0
    private var requestsServed = 0
    private var repliesToLose = 0

    public init(
        cell: VirtualCell, clock: any HostClock, serialNumber: String = "31415",
        deviceClock: SimulatedDeviceClock = SimulatedDeviceClock(driftPPM: 35, offsetNs: 42_000_000_000), seed: UInt64 = 7
    ) {
        self.cell = cell
        self.clock = clock
        self.serialNumber = serialNumber
        self.deviceClock = deviceClock
        serialNumberValue = Self.serialValue(serialNumber)
        noise = NoiseSource(seed: seed)
        spectrum = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 8192)
        spectrum.initialize(repeating: 0)
        advancedToTick = tick()
    }

    deinit {
        spectrum.deallocate()
        writer.deallocate()
    }

    static func serialValue(_ s: String) -> UInt32 {
        let digits = s.reversed().prefix { $0.isASCII && $0.isNumber }.reversed()
        if !digits.isEmpty, let v = UInt32(String(digits.suffix(9))) { return v }
        var h: UInt32 = 2_166_136_261
        for b in s.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return h % 100_000_000
    }

    // MARK: Serving

    /// Serves the device end of a packet link (USB bulk, datagrams): one request per received
    /// packet, one reply packet each, until `shouldStop` returns true or the link goes away.
    public func serve(_ link: any PacketTransport, shouldStop: () -> Bool) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        while !shouldStop() {
            do {
                let read = try link.receive(into: buffer, timeout: .milliseconds(20))
                guard read.count > 0 else { continue }
                var failure: (any Error)?
                respond(to: UnsafeRawBufferPointer(rebasing: buffer[0..<read.count]), overByteStream: false) { reply in
                    do { try link.send(reply, timeout: .seconds(2)) } catch { failure = error }
                }
                if failure != nil { return }
            } catch {
                return
            }
        }
    }

    /// Serves the device end of a byte stream (RS-232): finds requests in the stream.
    public func serve(_ link: any ByteStreamTransport, shouldStop: () -> Bool) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        var framer = SimRequestFramer()
        while !shouldStop() {
            do {
                let read = try link.read(into: buffer, timeout: .milliseconds(20))
                guard read.count > 0 else { continue }
                let outputs = framer.push(UnsafeRawBufferPointer(rebasing: buffer[0..<read.count]), now: read.hostTime.nanoseconds)
                var failure: (any Error)?
                for output in outputs {
                    switch output {
                    case .request(let bytes):
                        bytes.withUnsafeBytes { b in
                            respond(to: b, overByteStream: true) { reply in
                                do { try link.write(reply, timeout: .seconds(5)) } catch { failure = error }
                            }
                        }
                    case .lengthError:
                        lock.withLock { _ in
                            let reply = writer.ack(0x03)
                            do { try link.write(reply, timeout: .seconds(5)) } catch { failure = error }
                        }
                    }
                }
                if failure != nil { return }
            } catch {
                return
            }
        }
    }

    /// The device's answer to one request packet (as a packet link delivers it), as whole
    /// reply packets. No I/O: tests and benchmarks call this directly.
    public func handle(_ request: [UInt8]) -> [[UInt8]] {
        var replies: [[UInt8]] = []
        request.withUnsafeBytes { b in respond(to: b, overByteStream: false) { replies.append(Array($0)) } }
        return replies
    }

    /// Like `handle`, without copying: `emit` gets each reply packet, valid during the call.
    public func respond(to request: UnsafeRawBufferPointer, emit: (UnsafeRawBufferPointer) -> Void) {
        respond(to: request, overByteStream: false, emit)
    }

    // MARK: Test controls

    /// Power off and on: the MCA stops and is cleared, settings not saved with `20 02` are
    /// lost, and the next status says it is the first since a reboot.
    public func powerCycle() {
        lock.withLock { _ in
            config = saved
            enabled = false
            presetTimeReached = false
            presetCountReached = false
            clearLocked()
            firstStatusSinceReboot = true
        }
    }

    /// While true every request is answered with ACK 0D (busy: another interface in use).
    public var busy: Bool {
        get { lock.withLock { _ in isBusy } }
        set { lock.withLock { _ in isBusy = newValue } }
    }

    /// The next `count` requests are carried out but their replies are lost on the way (a
    /// dropped USB transfer, a corrupted serial line).
    public func loseReplies(_ count: Int) { lock.withLock { _ in repliesToLose += max(0, count) } }

    /// Multiplies every count rate (to show dead time at high rates). Default 1 (≈ 5 kcps).
    public var countRateScale: Double {
        get { lock.withLock { _ in scale } }
        set { lock.withLock { _ in scale = max(0, newValue) } }
    }

    /// What the simulated device is doing, for tests.
    public struct Snapshot: Sendable, Equatable {
        public var channels: Int
        public var mcaEnabled: Bool
        public var presetTimeReached: Bool
        public var realTimeMs: Int64
        public var accumulationMs: Int64
        public var fastCount: UInt64
        public var slowCount: UInt64
        /// Counts in the spectrum since the last clear.
        public var spectrumTotal: UInt64
        /// Expected rates from the model now: arriving at the detector, and recorded after
        /// dead time, counts/s.
        public var inputRateCps: Double
        public var outputRateCps: Double
        public var keVPerChannel: Double
        public var requestsServed: Int
        /// Times the line model was rebuilt (it is only when an input moved).
        public var modelRebuilds: Int
    }

    public var snapshot: Snapshot {
        lock.withLock { _ in
            let now = tick()
            advance(to: now)
            refreshModel()
            let tau = deadTimeSeconds
            let r = model.totalRate
            var total: UInt64 = 0
            for i in 0..<config.channels { total += UInt64(spectrum[i]) }
            return Snapshot(
                channels: config.channels, mcaEnabled: enabled, presetTimeReached: presetTimeReached, realTimeMs: realTimeMs(now),
                accumulationMs: Int64(liveNs / 1e6), fastCount: fastCount, slowCount: slowCount, spectrumTotal: total,
                inputRateCps: r, outputRateCps: model.inRangeRate / (1 + r * tau), keVPerChannel: model.keVPerChannel,
                requestsServed: requestsServed, modelRebuilds: model.rebuilds)
        }
    }

    /// The value a configuration readback would give for `name` ("??" when unknown).
    public func setting(_ name: String) -> String { lock.withLock { _ in config.readback(name, value: nil) } }

    /// Energy at the centre of `channel`, keV, with the current MCAC and GAIN.
    public func channelEnergyKeV(_ channel: Int) -> Double {
        lock.withLock { _ in (Double(channel) + 0.5) * AmptekSpectrumModel.fullScaleAtUnitGainKeV / config.gain / Double(config.channels) }
    }

    /// Energies (keV) of the model's lines at state of charge `soc`.
    public static func lineEnergiesKeV(stateOfCharge soc: Double) -> [String: Double] {
        Dictionary(uniqueKeysWithValues: AmptekSpectrumModel.lines.map { ($0.name, AmptekSpectrumModel.place($0, soc: soc).energyKeV) })
    }

    // MARK: The device

    private func tick() -> Int64 {
        let ns = deviceClock.deviceNanoseconds(at: clock.now())
        return ns >= 0 ? ns / 1_000_000 : (ns - 999_999) / 1_000_000
    }

    private func realTimeMs(_ now: Int64) -> Int64 { realTicks + (enabled ? now - enabledSinceTick : 0) }

    /// Non-paralyzable dead time per event, s.
    private var deadTimeSeconds: Double { (2 * config.peakingTimeUs + config.flatTopUs) * 1e-6 }

    private func refreshModel() {
        model.update(
            channels: config.channels, gain: config.gain, thresholdPercent: config.slowThresholdPercent, peakingTimeUs: config.peakingTimeUs,
            rateScale: scale, stateOfCharge: cell.snapshot.stateOfCharge)
    }

    /// Accumulates counts up to device tick `now` (a no-op while disabled).
    private func advance(to now: Int64) {
        defer { advancedToTick = max(advancedToTick, now) }
        guard enabled, now > advancedToTick else { return }
        refreshModel()
        let rIn = model.totalRate
        let tau = deadTimeSeconds
        let liveFraction = 1 / (1 + rIn * tau)
        var realS = Double(now - advancedToTick) / 1000
        var liveS = realS * liveFraction
        var stop = false
        if let preset = config.presetSeconds {
            let left = preset - liveNs / 1e9
            if liveS >= left {
                liveS = max(0, left)
                realS = liveS / liveFraction
                stop = true
                presetTimeReached = true
            }
        }
        if let presetReal = config.presetRealSeconds {
            let left = presetReal - Double(realTimeMs(advancedToTick)) / 1000
            if realS >= left {
                realS = max(0, left)
                liveS = realS * liveFraction
                stop = true
            }
        }
        var added: UInt64 = 0
        let n = config.channels
        model.rates.withUnsafeBufferPointer { rates in
            for i in 0..<n {
                let lambda = rates[i] * liveS
                guard lambda > 0 else { continue }
                let k = noise.poisson(lambda)
                spectrum[i] = (spectrum[i] &+ k) & 0xFF_FFFF
                added += UInt64(k)
            }
        }
        slowCount += added
        // Every recorded event was seen by the fast channel, and so were those that fell in
        // dead time or outside the spectrum.
        let missed = max(0, rIn * realS - model.inRangeRate * liveS)
        fastCount += added + UInt64(noise.poisson(missed))
        liveNs += liveS * 1e9
        if let presetCounts = config.presetCounts, Double(slowCount) >= presetCounts {
            stop = true
            presetCountReached = true
        }
        if stop {
            let stopTick = advancedToTick + Int64((realS * 1000).rounded())
            realTicks += max(0, stopTick - enabledSinceTick)
            enabled = false
        }
    }

    /// Clears the MCA at device tick `now` (by default, this instant). A clear that comes with a
    /// status passes that status's tick, so the real time it reported and the next interval's
    /// meet exactly: no time falls between two frames.
    private func clearLocked(at now: Int64? = nil) {
        for i in 0..<8192 { spectrum[i] = 0 }
        fastCount = 0
        slowCount = 0
        liveNs = 0
        realTicks = 0
        presetTimeReached = false
        presetCountReached = false
        let now = now ?? tick()
        enabledSinceTick = now
        advancedToTick = now
    }

    private func status(now: Int64) -> SimStatus {
        var s = SimStatus()
        s.fastCount = UInt32(truncatingIfNeeded: fastCount)
        s.slowCount = UInt32(truncatingIfNeeded: slowCount)
        s.accumulationMs = UInt64(liveNs / 1e6)
        s.realTimeMs = UInt32(truncatingIfNeeded: realTimeMs(now))
        s.serialNumber = serialNumberValue
        let hv = config.highVoltage
        s.highVoltage = hv == 0 ? 0 : hv + 0.5 * (noise.uniform() - 0.5)
        if let t = config.coolerSetpointK {
            s.detectorTemperatureK = t + 0.1 * noise.gaussian()
        } else {
            s.detectorTemperatureK = 303 + 0.2 * noise.gaussian()
        }
        s.boardTemperatureC = 30 + Int((0.4 * noise.gaussian()).rounded())
        s.presetTimeReached = presetTimeReached
        s.presetCountReached = presetCountReached
        s.mcaEnabled = enabled
        s.firstSinceReboot = firstStatusSinceReboot
        firstStatusSinceReboot = false
        s.clock80MHz = config.clock80MHz
        s.clockAuto = config.clock == "AUTO"
        s.preamp8_5V = config.values["PAPS"] == "8.5"
        return s
    }

    private func respond(to packet: UnsafeRawBufferPointer, overByteStream: Bool, _ emit: (UnsafeRawBufferPointer) -> Void) {
        lock.withLock { _ in
            requestsServed += 1
            let r = reply(to: packet, overByteStream: overByteStream)
            if repliesToLose > 0 {
                repliesToLose -= 1
            } else {
                emit(r)
            }
        }
    }

    /// The reply packet to one request packet (in `writer`'s buffer).
    private func reply(to p: UnsafeRawBufferPointer, overByteStream: Bool) -> UnsafeRawBufferPointer {
        guard p.count >= 2, p[0] == 0xF5, p[1] == 0xFA else { return writer.ack(0x01) }
        guard p.count >= 8 else { return writer.ack(0x03) }
        let length = Int(p[4]) << 8 | Int(p[5])
        guard p.count == 8 + length, length <= SimRequestFramer.maxRequestData else { return writer.ack(0x03) }
        var sum: UInt32 = 0
        for i in 0..<(6 + length) { sum &+= UInt32(p[i]) }
        let check = UInt32(p[6 + length]) << 8 | UInt32(p[7 + length])
        guard (sum + check) & 0xFFFF == 0 else { return writer.ack(0x04) }
        if isBusy { return writer.ack(0x0D) }
        let pid1 = p[2]
        let pid2 = p[3]
        let data = UnsafeRawBufferPointer(rebasing: p[6..<(6 + length)])
        let now = tick()
        switch (pid1, pid2) {
        case (0x01, 0x01):
            guard length == 0 else { return writer.ack(0x03) }
            advance(to: now)
            status(now: now).write(to: writer.data)
            return writer.finish(pid1: 0x80, pid2: 0x01, length: 64)
        case (0x02, 0x01...0x04):
            guard length == 0 else { return writer.ack(0x03) }
            advance(to: now)
            let withStatus = pid2 >= 3
            let clear = pid2 == 2 || pid2 == 4
            let n = config.channels
            let out = writer.data
            for i in 0..<n {
                let c = spectrum[i]
                out[3 * i] = UInt8(c & 0xFF)
                out[3 * i + 1] = UInt8((c >> 8) & 0xFF)
                out[3 * i + 2] = UInt8((c >> 16) & 0xFF)
            }
            var size = 3 * n
            if withStatus {
                status(now: now).write(to: UnsafeMutableRawBufferPointer(rebasing: out[size...]))
                size += 64
            }
            if clear { clearLocked(at: now) }
            // 81 01 … 81 0C: 256 channels → 1, doubling; +1 with the status.
            var code: UInt8 = 1
            var c = 256
            while c < n {
                c <<= 1
                code += 2
            }
            return writer.finish(pid1: 0x81, pid2: code + (withStatus ? 1 : 0), length: size)
        case (0x03, 0x01), (0x03, 0x03):
            guard length == 0 else { return writer.ack(0x03) }
            return writer.ack(0x0A)
        case (0x03, 0x09):
            guard length == 0 else { return writer.ack(0x03) }
            // List mode is not running: an empty list-mode data packet.
            return writer.finish(pid1: 0x82, pid2: 0x0A, length: 0)
        case (0x20, 0x02), (0x20, 0x04):
            guard length > 0 else { return writer.ack(0x03) }
            return textConfiguration(data, save: pid2 == 0x02)
        case (0x20, 0x03):
            guard length > 0 else { return writer.ack(0x03) }
            return readback(data)
        case (0xF0, 0x01):
            guard length == 0 else { return writer.ack(0x03) }
            advance(to: now)
            clearLocked()
            return writer.ack(0x00)
        case (0xF0, 0x02):
            guard length == 0 else { return writer.ack(0x03) }
            if !enabled {
                enabled = true
                enabledSinceTick = now
                advancedToTick = now
                presetTimeReached = false
                presetCountReached = false
            }
            return writer.ack(0x00)
        case (0xF0, 0x03):
            guard length == 0 else { return writer.ack(0x03) }
            advance(to: now)
            if enabled {
                realTicks += now - enabledSinceTick
                enabled = false
            }
            return writer.ack(0x00)
        case (0xF0, 0x20...0x22):
            guard length == 0 else { return writer.ack(0x03) }
            return writer.ack(0x00)
        case (0xF1, 0x00...0x0F):
            // Comm test: answer with the ACK packet asked for.
            return writer.ack(pid2)
        case (0xF1, 0x7F):
            let out = writer.data
            for i in 0..<length { out[i] = data[i] }
            return writer.finish(pid1: 0x8F, pid2: 0x7F, length: length)
        default:
            return writer.ack(0x02)
        }
    }

    /// Text configuration: every valid command is applied; the last error (05 bad parameter,
    /// 07 unrecognised command) is answered with that command echoed.
    private func textConfiguration(_ data: UnsafeRawBufferPointer, save: Bool) -> UnsafeRawBufferPointer {
        let text = String(decoding: data, as: UTF8.self)
        advance(to: tick())
        let before = config.channels
        var error: (code: UInt8, echo: String)?
        for item in text.split(separator: ";", omittingEmptySubsequences: true) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            let value = parts.count == 2 ? String(parts[1]) : nil
            guard name.count == 4, name == name.uppercased(), !name.contains(where: \.isWhitespace) else {
                error = (0x07, String(item) + ";")
                continue
            }
            switch config.apply(name: name, value: value) {
            case .ok: break
            case .badParameter: error = (0x05, String(item) + ";")
            case .unrecognized: error = (0x07, String(item) + ";")
            }
        }
        if !text.hasSuffix(";") { error = (0x05, String(text.split(separator: ";").last ?? "")) }
        if config.channels != before { clearLocked() }
        if save { saved = config }
        if let error { return writer.ack(error.code, echo: Array(error.echo.utf8.prefix(64))) }
        return writer.ack(0x00)
    }

    /// Configuration readback: each command of the template with its current value.
    private func readback(_ data: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        let text = String(decoding: data, as: UTF8.self)
        var steering = config
        var out = ""
        for item in text.split(separator: ";", omittingEmptySubsequences: true) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            let value = steering.readbackSteering(name, value: parts.count == 2 ? String(parts[1]) : nil)
            out += "\(name)=\(value);"
        }
        let bytes = Array(out.utf8.prefix(32767))
        let d = writer.data
        for (i, b) in bytes.enumerated() { d[i] = b }
        return writer.finish(pid1: 0x82, pid2: 0x07, length: bytes.count)
    }
}
