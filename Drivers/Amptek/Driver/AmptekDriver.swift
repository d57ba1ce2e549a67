import OperandoCore

/// Driver for Amptek digital pulse processors and spectrometers speaking the DP5 packet protocol:
/// DP5, PX5, DP5G and the X-123 family (a DP5 and a PC5 supply behind the detector).
///
/// Over USB (or any packet link) each received transfer, and over RS-232 (a byte stream) each
/// read, goes through the same `AmptekFramer`, so one code path serves both links.
///
/// Setup reads the status (identity), disables the MCA, sends the text configuration (MCAC,
/// extra commands, GAIN, PRET), reads it back and compares, clears and enables the MCA. Then
/// every `poll_ms` it asks for the spectrum + status and clears the MCA in the same instant, so
/// each frame holds exactly one interval's counts:
///
/// - stream 0 `<name>/spectrum`: u32 counts, shape `[channels]`;
/// - stream 1 `<name>/status`: f64 fields (see `statusFields`);
///
/// both stamped with the reply's arrival (host) and the acquisition's real time at the end of
/// the interval (device, ns: the sum of the cleared intervals' real times, i.e. the real time
/// the DP5 would show without the per-frame clear; it restarts at 0 with each acquisition).
/// The DP5 takes that reading when it processes the request, so each frame also gives the clock
/// model a bracketed observation: the request's send time and the first reply byte's arrival
/// bound the instant.
///
/// Commands: `configure` (`text`: "PRET=20;…", applied, read back, recorded), `enable`,
/// `disable`, `clear`, `status`.
public final class AmptekDriver: Instrument, @unchecked Sendable {
    public static let driverName = "amptek-dp5"
    public static let driverVersion = "1.0.0"
    public static let linkKind = LinkKind.packets
    /// Over RS-232 the packets are found in the byte stream.
    public static let acceptsByteStream = true
    /// The DP5's RS-232 port: 115200 baud, 8 data bits, no parity, 1 stop bit, no handshaking
    /// (Programmer's Guide 3.3; 57600 or 19200 can be selected, which disables Ethernet).
    public static var serialDefaults: SerialSettings { SerialSettings(baudRate: 115_200, dataBits: 8, parity: .none, stopBits: 1, flowControl: .none) }
    /// The real-time counter counts milliseconds.
    public static let clockResolutionNs = 1_000_000.0

    /// The status stream's fields, in order.
    public static let statusFields: [Field] = [
        Field("fast_count", unit: "counts"), Field("slow_count", unit: "counts"), Field("gp_count", unit: "counts"),
        Field("dead_time_pct", unit: "%"), Field("accumulation_s", unit: "s"), Field("real_time_s", unit: "s"),
        Field("elapsed_s", unit: "s"), Field("input_rate_cps", unit: "1/s"), Field("output_rate_cps", unit: "1/s"),
        Field("detector_temp_k", unit: "K"), Field("board_temp_c", unit: "degC"), Field("hv_v", unit: "V"),
        Field("mca_enabled", unit: "0/1"), Field("preset_reached", unit: "0/1"),
    ]

    public let name: String
    public let settings: AmptekSettings
    public let streams: [StreamDescriptor]
    public var channels: Int { settings.channels }
    public var pollNs: Int64 { Int64(settings.pollMilliseconds) * 1_000_000 }

    /// What setup found.
    public private(set) var identity: DeviceIdentity?
    /// The latest status the device sent.
    public private(set) var lastStatus: AmptekStatus?
    /// The configuration the device read back at setup or after `configure` (name → value).
    public private(set) var configuration: [String: String] = [:]
    /// Frames pushed since the driver was made.
    public private(set) var framesPushed = 0
    /// Bytes the framer threw away (garbage, bad checksums) since the driver was made.
    public private(set) var discardedBytes = 0
    /// Bytes read from the link since the driver was made.
    public private(set) var bytesReceived = 0
    /// True while a poll's reply is awaited.
    public var isAwaitingReply: Bool { pending != nil }
    /// The device time of the latest frame, ns (see the type's documentation).
    public private(set) var deviceTimeNs: Int64 = 0
    /// The preset time in force (s; 0 = none).
    public private(set) var presetSeconds: Double

    /// How long a request from setup or a command may go unanswered (the DP5 may stall up to
    /// 400 ms writing its flash after a text configuration), plus a spectrum's transfer time.
    public private(set) var replyTimeoutNs: Int64 = 1_500_000_000
    /// How long a poll may go unanswered before it is given up and sent again: twice the poll
    /// period, at least 250 ms and at most 1 s, plus a spectrum's transfer time.
    public private(set) var pollTimeoutNs: Int64 = 1_000_000_000
    /// Without any packet from the device for this long, `acquire` throws so the daemon
    /// reconnects: 3 poll periods + 1 s (over a byte stream, plus 3 transfer times of a
    /// spectrum at 57600 baud).
    public private(set) var silenceLimitNs: Int64

    private enum Phase: Equatable {
        case idle
        /// Polling spectrum + status + clear.
        case acquiring
        /// The MCA is stopped (preset reached, `disable`, or stopped by something else): only
        /// the status is polled, to watch the link and the detector.
        case stopped
    }

    private enum Poll { case spectrum, status }

    private struct Pending {
        var poll: Poll
        var sentAt: HostInstant
    }

    /// A reply to a request made from setup or a command (copied out of the framer).
    private struct Reply {
        var id: AmptekPacketID
        var data: [UInt8]
        var startStamp: Int64
        var arrival: HostInstant
    }

    private var phase = Phase.idle
    private var pending: Pending?
    private var nextPoll = HostInstant(nanoseconds: 0)
    private var lastHeard = HostInstant(nanoseconds: 0)
    private var isByteStream = false
    /// The acquisition's real and accumulation time so far (sum of the cleared intervals), ms.
    private var epochRealMs: Int64 = 0
    private var epochAccumulationMs: Int64 = 0
    /// The previous frame's request and arrival, for the real-time plausibility check; nil at
    /// the start of an acquisition.
    private var previousFrame: (sentAt: HostInstant, arrival: HostInstant)?
    private var presetReported = false
    /// The PRET the device holds now, s (0 = off). The DP5 compares PRET with the accumulation
    /// time since the last clear, and every poll clears: so the driver keeps the total itself
    /// and lowers the device's PRET to what is left for the last interval.
    private var devicePresetSeconds = 0.0
    /// Set while a frame is handled; acted on after the framer returns.
    private var restartReason: String?
    private var presetUpdate: Double?
    private var awaitingReply = false
    private var reply: Reply?

    // Preallocated storage (the acquire path does not allocate).
    private let framer = AmptekFramer(headerCheck: .replies)
    private let readBuffer: UnsafeMutableRawBufferPointer
    private let counts: UnsafeMutableBufferPointer<UInt32>
    private let sample: UnsafeMutableBufferPointer<Double>
    private let spectrumRequest = AmptekRequest.spectrumStatusClear.encoded
    private let statusRequest = AmptekRequest.status.encoded

    public init(name: String, settings: DeviceSettings) throws {
        self.name = name
        self.settings = try AmptekSettings(device: name, settings)
        presetSeconds = self.settings.presetSeconds
        let n = self.settings.channels
        let rate = 1000.0 / Double(self.settings.pollMilliseconds)
        streams = [
            StreamDescriptor(
                name: "\(name)/spectrum", device: name, kind: .frames, elementType: .uint32,
                fields: [Field("counts", unit: "counts")], shape: [n], nominalRateHz: rate, maxPayloadBytes: n * 4),
            StreamDescriptor(
                name: "\(name)/status", device: name, kind: .samples, elementType: .float64,
                fields: Self.statusFields, shape: [Self.statusFields.count], nominalRateHz: rate, maxPayloadBytes: Self.statusFields.count * 8),
        ]
        silenceLimitNs = 3 * Int64(self.settings.pollMilliseconds) * 1_000_000 + 1_000_000_000
        readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
        counts = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 8192)
        counts.initialize(repeating: 0)
        sample = UnsafeMutableBufferPointer<Double>.allocate(capacity: Self.statusFields.count)
        sample.initialize(repeating: 0)
    }

    deinit {
        readBuffer.deallocate()
        counts.deallocate()
        sample.deallocate()
    }

    // MARK: Instrument

    public func setup(link: DeviceLink, sink: any RecordSink) throws -> DeviceIdentity {
        phase = .idle
        pending = nil
        restartReason = nil
        framer.reset()
        if case .byteStream = link { isByteStream = true } else { isByteStream = false }
        // Over RS-232 a spectrum takes time on the wire (8192 channels: 2.1 s at 115200 baud).
        let transferNs = isByteStream ? Int64(AmptekSpectrum.dataLength(channels: channels, withStatus: true) + 8) * 10 * 1_000_000_000 / 57_600 : 0
        replyTimeoutNs = 1_500_000_000 + transferNs
        pollTimeoutNs = min(1_000_000_000, max(250_000_000, 2 * pollNs)) + transferNs
        silenceLimitNs = 3 * (pollNs + transferNs) + 1_000_000_000
        try drain(link)

        let statusReply = try exchange(.status, link: link, sink: sink)
        guard let status = AmptekStatus(statusReply.data) else {
            throw InstrumentError(.protocolViolation, device: name, "the status packet has \(statusReply.data.count) bytes instead of 64; is this an Amptek DP5-family device?")
        }
        lastStatus = status
        let id = DeviceIdentity(
            model: status.modelName, serialNumber: "\(status.serialNumber)",
            firmware: "FW \(status.firmwareVersion), FPGA \(status.fpgaVersion)", protocolVersion: "DP5 packets (Programmer's Guide A7)")
        identity = id

        _ = try exchange(.disableMCA, link: link, sink: sink)
        let readBack = try configure(settings.commands, link: link, sink: sink)
        sink.event(Event(
            kind: .stateChange, source: name, hostTime: sink.clock.now(),
            message: "configuration read back: \(readBack.map(\.description).joined())",
            values: Dictionary(readBack.map { ($0.name, EventValue.string($0.value ?? "")) }, uniquingKeysWith: { a, _ in a })))
        try startAcquisition(link: link, sink: sink, clear: settings.clearOnStart, why: "setup")
        return id
    }

    public func acquire(link: DeviceLink, sink: any RecordSink, budget: Duration) throws {
        let budgetNs = max(1_000_000, budget.nanosecondsValue)
        var now = sink.clock.now()
        try checkSilence(now)
        if let p = pending, now.nanoseconds - p.sentAt.nanoseconds > pollTimeoutNs {
            // The reply is lost (or arrived mangled): say so, drop any half packet, ask again.
            framer.flush { route($0, arrival: now, sink: sink) }
            pending = nil
            nextPoll = now
            if p.poll == .spectrum {
                // The device cleared when it read the request: that interval's counts and real
                // time are gone, so the device time cannot continue; a new epoch starts.
                restartEpoch()
                sink.event(Event(
                    kind: .alarm, source: name, hostTime: now,
                    message: "no reply to \(AmptekRequest.spectrumStatusClear.description) within \(pollTimeoutNs / 1_000_000) ms; asking again (the counts of that interval are lost; the device time restarts)",
                    values: ["reason": .string("reply lost")]))
            } else {
                sink.event(Event(kind: .alarm, source: name, hostTime: now, message: "no reply to \(AmptekRequest.status.description) within \(pollTimeoutNs / 1_000_000) ms; asking again"))
            }
        }
        if pending == nil, phase != .idle, now >= nextPoll {
            try sendPoll(link: link, now: now)
            now = sink.clock.now()
        }
        let waitNs: Int64
        if let p = pending {
            waitNs = min(budgetNs, max(1_000_000, p.sentAt.nanoseconds + pollTimeoutNs - now.nanoseconds))
        } else {
            waitNs = min(budgetNs, max(1_000_000, nextPoll.nanoseconds - now.nanoseconds))
        }
        let read = try readOnce(link, timeoutNs: waitNs)
        if read.count > 0 { feed(count: read.count, arrival: read.hostTime, sink: sink) }
        if let why = restartReason {
            restartReason = nil
            try recoverFromReset(why, link: link, sink: sink)
        } else if let preset = presetUpdate {
            presetUpdate = nil
            try setDevicePreset(preset, link: link, sink: sink)
        }
    }

    public func shutdown(link: DeviceLink) {
        phase = .idle
        pending = nil
        try? write(AmptekRequest.disableMCA.encoded, link)
    }

    public func perform(_ command: DeviceCommand, link: DeviceLink, sink: any RecordSink) throws -> [String: EventValue] {
        switch command.name {
        case "configure":
            guard case .string(let text)? = command.arguments["text"] else {
                throw InstrumentError(.rejected, device: name, "configure needs the argument text: DP5 commands such as \"PRET=20;THSL=1.2;\"")
            }
            let commands: [AmptekTextCommand]
            do { commands = try AmptekTextConfig.parse(text, requireValues: true) } catch {
                throw InstrumentError(.rejected, device: name, "configure: \(error)")
            }
            guard !commands.isEmpty else { throw InstrumentError(.rejected, device: name, "configure: no commands in \(text.debugDescription)") }
            if let c = commands.first(where: { $0.name == "MCAC" || $0.name == "RESC" }) {
                throw InstrumentError(
                    .rejected, device: name,
                    "configure: \(c.name) would change the channel count, which fixes the spectrum stream's shape; change `channels` in the device's settings and restart it")
            }
            let readBack = try configure(commands, link: link, sink: sink)
            if let p = readBack.first(where: { $0.name == "PRET" })?.value {
                // The new preset counts the whole acquisition, like `preset_s`.
                presetSeconds = AmptekTextConfig.number(p) ?? 0
                devicePresetSeconds = presetSeconds
                presetReported = false
            }
            var values: [String: EventValue] = [:]
            for c in readBack { values[c.name] = .string(c.value ?? "") }
            sink.event(Event(kind: .stateChange, source: name, hostTime: sink.clock.now(), message: "configuration changed: \(readBack.map(\.description).joined())", values: values))
            return values
        case "enable":
            // After the preset time was reached the MCA would stop at once: clear it first.
            try startAcquisition(link: link, sink: sink, clear: lastStatus?.presetTimeReached == true || presetReported, why: "enable command")
            return ["mca_enabled": .bool(true)]
        case "disable":
            _ = try exchange(.disableMCA, link: link, sink: sink)
            phase = .stopped
            sink.event(Event(kind: .stateChange, source: name, hostTime: sink.clock.now(), message: "acquisition stopped: disable command", values: ["state": .string("stopped")]))
            return ["mca_enabled": .bool(false)]
        case "clear":
            _ = try exchange(.clearSpectrum, link: link, sink: sink)
            // The real time restarts with the counts: a new device-time epoch.
            restartEpoch()
            sink.event(Event(kind: .stateChange, source: name, hostTime: sink.clock.now(), message: "spectrum cleared (clear command)"))
            return ["cleared": .bool(true)]
        case "status":
            let r = try exchange(.status, link: link, sink: sink)
            guard let s = AmptekStatus(r.data) else { throw InstrumentError(.protocolViolation, device: name, "the status packet has \(r.data.count) bytes instead of 64") }
            lastStatus = s
            return statusValues(s)
        default:
            throw InstrumentError(.unsupported, device: command.device, "the \(Self.driverName) driver has no command \"\(command.name)\"; it knows configure, enable, disable, clear, status")
        }
    }

    // MARK: Acquisition

    private func startAcquisition(link: DeviceLink, sink: any RecordSink, clear: Bool, why: String) throws {
        if presetSeconds > 0, devicePresetSeconds != presetSeconds { try setDevicePreset(presetSeconds, link: link, sink: sink) }
        if clear { _ = try exchange(.clearSpectrum, link: link, sink: sink) }
        _ = try exchange(.enableMCA, link: link, sink: sink)
        let now = sink.clock.now()
        restartEpoch()
        phase = .acquiring
        presetReported = false
        lastHeard = now
        nextPoll = now.advanced(byNanoseconds: pollNs)
        sink.event(Event(
            kind: .stateChange, source: name, hostTime: now,
            message: "acquisition started (\(why)): \(channels) channels, spectrum every \(settings.pollMilliseconds) ms, preset \(presetSeconds > 0 ? AmptekTextConfig.fixed(presetSeconds, decimals: 1) + " s" : "none")",
            values: [
                "channels": .integer(Int64(channels)), "preset_s": .number(presetSeconds), "poll_ms": .integer(Int64(settings.pollMilliseconds)),
                "cleared": .bool(clear), "state": .string("acquiring"),
            ]))
    }

    private func restartEpoch() {
        epochRealMs = 0
        epochAccumulationMs = 0
        previousFrame = nil
    }

    /// Sets the device's PRET without writing its flash (`20 04`), for the rest of the preset.
    private func setDevicePreset(_ seconds: Double, link: DeviceLink, sink: any RecordSink) throws {
        let text = "PRET=\(AmptekTextConfig.fixed(seconds, decimals: 1));"
        do {
            _ = try exchange(try AmptekRequest.textConfigurationVolatile(text), link: link, sink: sink)
        } catch let e as AmptekProtocolError {
            throw InstrumentError(.rejected, device: name, "\(text): \(e)")
        }
        devicePresetSeconds = seconds
    }

    /// The device rebooted (or its real time jumped back): configure and start again.
    private func recoverFromReset(_ why: String, link: DeviceLink, sink: any RecordSink) throws {
        sink.event(Event(kind: .alarm, source: name, hostTime: sink.clock.now(), message: "detector reset: \(why); configuring it again and restarting the acquisition", values: ["reason": .string("reset")]))
        pending = nil
        _ = try exchange(.disableMCA, link: link, sink: sink)
        _ = try configure(settings.commands, link: link, sink: sink)
        devicePresetSeconds = settings.presetSeconds
        try startAcquisition(link: link, sink: sink, clear: true, why: "after a detector reset")
    }

    private func checkSilence(_ now: HostInstant) throws {
        let silent = now.nanoseconds - lastHeard.nanoseconds
        guard phase != .idle, silent > silenceLimitNs else { return }
        let what = pending.map { $0.poll == .spectrum ? AmptekRequest.spectrumStatusClear.description : AmptekRequest.status.description } ?? "any request"
        throw InstrumentError(
            .replyTimedOut, device: name,
            "no reply from the detector for \(silent / 1_000_000) ms (last asked: \(what); the limit is \(silenceLimitNs / 1_000_000) ms = 3 polls of \(settings.pollMilliseconds) ms + 1 s); it stopped answering: check its power and cable. Reconnecting")
    }

    private func sendPoll(link: DeviceLink, now: HostInstant) throws {
        let poll: Poll = phase == .acquiring ? .spectrum : .status
        try write(poll == .spectrum ? spectrumRequest : statusRequest, link)
        pending = Pending(poll: poll, sentAt: now)
        let next = nextPoll.advanced(byNanoseconds: pollNs)
        nextPoll = next > now ? next : now.advanced(byNanoseconds: pollNs)
    }

    /// Every packet and discarded stretch the framer finds goes through here.
    private func route(_ item: AmptekFrameItem, arrival: HostInstant, sink: any RecordSink) {
        switch item {
        case .discarded(let n, let reason):
            discardedBytes += n
            sink.event(Event(
                kind: .alarm, source: name, hostTime: arrival, message: "skipped \(n) bytes from the detector: \(reason); resynchronised on the next packet",
                values: ["bytes": .integer(Int64(n)), "discarded_bytes_total": .integer(Int64(discardedBytes))]))
        case .packet(let id, let data, let startStamp):
            lastHeard = arrival
            if awaitingReply {
                reply = Reply(id: id, data: Array(data), startStamp: startStamp, arrival: arrival)
                awaitingReply = false
                return
            }
            guard let p = pending else {
                sink.event(Event(kind: .alarm, source: name, hostTime: arrival, message: "skipped a packet \(id) (\(data.count) bytes) that answers no outstanding request"))
                return
            }
            handlePoll(p, id: id, data: data, startStamp: startStamp, arrival: arrival, sink: sink)
        }
    }

    private func handlePoll(_ p: Pending, id: AmptekPacketID, data: UnsafeRawBufferPointer, startStamp: Int64, arrival: HostInstant, sink: any RecordSink) {
        let kind = AmptekReplyKind(id)
        let request = p.poll == .spectrum ? AmptekRequest.spectrumStatusClear : AmptekRequest.status
        if case .ack(let code) = kind {
            pending = nil
            let ack = AmptekAck(code: code, data: data)
            sink.event(Event(
                kind: .alarm, source: name, hostTime: arrival, message: "the detector answered \(request.description) with \(ack.message)",
                values: ["ack_code": .integer(Int64(code))]))
            return
        }
        guard kind.answers(request.expectedReply) else {
            sink.event(Event(kind: .alarm, source: name, hostTime: arrival, message: "skipped a packet \(id) (\(data.count) bytes) while waiting for the reply to \(request.description)"))
            return
        }
        pending = nil
        switch p.poll {
        case .spectrum:
            guard let (n, status) = AmptekSpectrum.decode(pid2: id.pid2, data: data, into: counts), let status else { return }
            guard n == channels else {
                sink.event(Event(
                    kind: .alarm, source: name, hostTime: arrival,
                    message: "skipped a spectrum of \(n) channels; the stream has \(channels) (was MCAC changed by another program?)"))
                return
            }
            frame(status, channels: n, sentAt: p.sentAt, startStamp: startStamp, arrival: arrival, sink: sink)
        case .status:
            guard let status = AmptekStatus(data) else { return }
            stoppedStatus(status, arrival: arrival, sink: sink)
        }
    }

    /// One spectrum + status reply while acquiring.
    private func frame(_ s: AmptekStatus, channels n: Int, sentAt: HostInstant, startStamp: Int64, arrival: HostInstant, sink: any RecordSink) {
        lastStatus = s
        if s.firstSinceReboot {
            restartReason = "the status says it is the first since the detector rebooted; the counts since the previous frame are lost"
            return
        }
        let interval = Int64(s.realTimeMs)
        let running = s.mcaEnabled
        // The interval's real time must cover the time between the two readings (each taken
        // between a request's send and its reply's first byte), less 1 % and the 1 ms steps.
        if running, let prev = previousFrame {
            let minimumMs = (sentAt.nanoseconds - Int64(prev.arrival.nanoseconds)) / 1_000_000
            if interval + 2 + minimumMs / 100 < minimumMs {
                sink.event(Event(
                    kind: .alarm, source: name, hostTime: arrival,
                    message: "the detector's real time went back: \(interval) ms since the previous frame, which was read at least \(minimumMs) ms earlier (the spectrum was cleared or the detector reset by something else); the device time restarts",
                    values: ["real_time_ms": .integer(interval), "expected_at_least_ms": .integer(minimumMs), "reason": .string("real time went backwards")]))
                restartEpoch()
            }
        }
        epochRealMs += interval
        epochAccumulationMs += Int64(s.accumulationTimeMs)
        let deviceTime = epochRealMs * 1_000_000
        deviceTimeNs = deviceTime
        sink.push(stream: 0, hostTime: arrival, deviceTime: deviceTime, payload: UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: counts[0..<n])))
        framesPushed += 1
        fillSample(s, elapsedMs: epochRealMs)
        sink.push(stream: 1, hostTime: arrival, deviceTime: deviceTime, payload: UnsafeRawBufferPointer(sample))
        if running {
            // The DP5 read its real time when it processed the request: after `sentAt`, and
            // before it started the reply. The real time is counted in whole milliseconds, and
            // the running sum starts from one such reading, so the device clock read exactly
            // `deviceTime` within one tick of that moment: the bracket is widened by a tick on
            // each side (without it, the quantisation looks like a contradiction to the clock
            // model, which then never learns the drift).
            let tick = Int64(Self.clockResolutionNs)
            sink.clockExchange(hostBefore: sentAt.advanced(byNanoseconds: -tick), deviceTime: deviceTime, hostAfter: HostInstant(nanoseconds: startStamp + tick))
            previousFrame = (sentAt, arrival)
            if presetSeconds > 0 {
                // Lower the device's PRET (counted from this frame's clear) to what is left once
                // less than two polls of accumulation remain; 0.1 s steps.
                let leftMs = Int64((presetSeconds * 1000).rounded()) - epochAccumulationMs
                if leftMs < 2 * Int64(settings.pollMilliseconds) {
                    let left = max(0.1, (Double(leftMs) / 100).rounded() / 10)
                    if left != devicePresetSeconds { presetUpdate = left }
                }
            }
            return
        }
        previousFrame = nil
        phase = .stopped
        if s.presetTimeReached || s.presetCountReached {
            guard !presetReported else { return }
            presetReported = true
            let which = s.presetTimeReached ? "preset time reached" : "preset count reached"
            sink.event(Event(
                kind: .stateChange, source: name, hostTime: arrival, deviceTime: deviceTime,
                message: "acquisition stopped: \(which) (\(AmptekTextConfig.fixed(Double(epochAccumulationMs) / 1000, decimals: 3)) s accumulated in \(AmptekTextConfig.fixed(Double(epochRealMs) / 1000, decimals: 3)) s)",
                values: [
                    "state": .string("stopped"), "reason": .string(which), "preset_s": .number(presetSeconds),
                    "accumulation_s": .number(Double(epochAccumulationMs) / 1000), "real_time_s": .number(Double(epochRealMs) / 1000),
                ]))
        } else {
            sink.event(Event(
                kind: .alarm, source: name, hostTime: arrival, deviceTime: deviceTime,
                message: "the MCA stopped without reaching a preset (disabled by another program or interface?); polling the status only. `enable` restarts it",
                values: ["state": .string("stopped")]))
        }
    }

    /// A status reply while the MCA is stopped.
    private func stoppedStatus(_ s: AmptekStatus, arrival: HostInstant, sink: any RecordSink) {
        let wasReported = lastStatus?.firstSinceReboot == true
        lastStatus = s
        if s.firstSinceReboot && !wasReported {
            sink.event(Event(kind: .alarm, source: name, hostTime: arrival, message: "detector reset: the status says it is the first since the detector rebooted (the MCA is stopped; `enable` restarts it)", values: ["reason": .string("reset")]))
        }
        fillSample(s, elapsedMs: epochRealMs)
        sink.push(stream: 1, hostTime: arrival, deviceTime: nil, payload: UnsafeRawBufferPointer(sample))
    }

    private func fillSample(_ s: AmptekStatus, elapsedMs: Int64) {
        let real = s.realTimeSeconds
        sample[0] = Double(s.fastCount)
        sample[1] = Double(s.slowCount)
        sample[2] = Double(s.gpCount)
        sample[3] = s.deadTimePercent
        sample[4] = s.accumulationSeconds
        sample[5] = real
        sample[6] = Double(elapsedMs) / 1000
        sample[7] = real > 0 ? Double(s.fastCount) / real : 0
        sample[8] = real > 0 ? Double(s.slowCount) / real : 0
        sample[9] = s.detectorTemperatureK
        sample[10] = Double(s.boardTemperatureC)
        sample[11] = s.highVoltage
        sample[12] = s.mcaEnabled ? 1 : 0
        sample[13] = s.presetTimeReached ? 1 : 0
    }

    private func statusValues(_ s: AmptekStatus) -> [String: EventValue] {
        [
            "model": .string(s.modelName), "serial_number": .integer(Int64(s.serialNumber)), "firmware": .string(s.firmwareVersion),
            "fpga": .string(s.fpgaVersion), "fast_count": .integer(Int64(s.fastCount)), "slow_count": .integer(Int64(s.slowCount)),
            "gp_count": .integer(Int64(s.gpCount)), "dead_time_pct": .number(s.deadTimePercent), "accumulation_s": .number(s.accumulationSeconds),
            "real_time_s": .number(s.realTimeSeconds), "detector_temp_k": .number(s.detectorTemperatureK),
            "board_temp_c": .integer(Int64(s.boardTemperatureC)), "hv_v": .number(s.highVoltage), "mca_enabled": .bool(s.mcaEnabled),
            "preset_reached": .bool(s.presetTimeReached), "fpga_clock_mhz": .integer(s.fpgaClock80MHz ? 80 : 20),
            "acquiring": .bool(phase == .acquiring), "device_time_s": .number(Double(deviceTimeNs) / 1e9),
        ]
    }

    // MARK: Configuration

    /// Sends `commands`, reads them back and compares; returns what was read back.
    @discardableResult
    private func configure(_ commands: [AmptekTextCommand], link: DeviceLink, sink: any RecordSink) throws -> [AmptekTextCommand] {
        let text = AmptekTextConfig.format(commands)
        let set: AmptekRequest
        let get: AmptekRequest
        do {
            set = try .textConfiguration(text)
            get = try .configurationReadback(AmptekTextConfig.readbackTemplate(commands))
        } catch {
            throw InstrumentError(.rejected, device: name, "text configuration \(text.debugDescription): \(error)")
        }
        _ = try exchange(set, link: link, sink: sink)
        if let p = commands.first(where: { $0.name == "PRET" })?.value { devicePresetSeconds = AmptekTextConfig.number(p) ?? 0 }
        let r = try exchange(get, link: link, sink: sink)
        let readText = String(decoding: r.data, as: UTF8.self)
        let readBack: [AmptekTextCommand]
        do { readBack = try AmptekTextConfig.parse(readText, requireValues: false) } catch {
            throw InstrumentError(.protocolViolation, device: name, "the configuration readback \(readText.debugDescription) cannot be parsed: \(error)")
        }
        var got: [String: String] = [:]
        for c in readBack { got[c.name] = c.value ?? "" }
        for c in commands where c.name != "RESC" && c.name != "SCAI" {
            guard let sent = c.value else { continue }
            guard let value = got[c.name] else {
                throw InstrumentError(.protocolViolation, device: name, "the configuration readback \(readText.debugDescription) lacks \(c.name), which was set to \(sent)")
            }
            guard AmptekTextConfig.valuesAgree(sent: sent, readBack: value) else {
                throw InstrumentError(
                    .rejected, device: name,
                    "the detector read back \(c.name)=\(value) after being sent \(c.name)=\(sent)\(value.contains("?") ? " (it does not know the command)" : ""); check the value against the DP5 Programmer's Guide for this model")
            }
            configuration[c.name] = value
        }
        return readBack
    }

    // MARK: Requests from setup and commands

    /// Sends `request` and waits for its reply (checking the reply's kind). A poll still
    /// outstanding is finished first, so replies never cross.
    @discardableResult
    private func exchange(_ request: AmptekRequest, link: DeviceLink, sink: any RecordSink) throws -> Reply {
        try finishPending(link: link, sink: sink)
        reply = nil
        awaitingReply = true
        defer { awaitingReply = false }
        let sent = sink.clock.now()
        try write(request.encoded, link)
        var waitedNs: Int64 = 0
        while reply == nil {
            let elapsed = max(sink.clock.now().nanoseconds - sent.nanoseconds, waitedNs)
            if elapsed >= replyTimeoutNs {
                framer.flush { route($0, arrival: sink.clock.now(), sink: sink) }
                if reply != nil { break }
                throw InstrumentError(
                    .replyTimedOut, device: name,
                    "no reply to \(request.description) within \(replyTimeoutNs / 1_000_000) ms; check that the detector is powered and connected (RS-232: 115200 8N1), and that no other program (e.g. DPPMCA) holds it")
            }
            let slice = min(50_000_000, replyTimeoutNs - elapsed)
            let read = try readOnce(link, timeoutNs: slice)
            if read.count == 0 {
                waitedNs += slice
            } else {
                feed(count: read.count, arrival: read.hostTime, sink: sink)
            }
        }
        let r = reply!
        reply = nil
        let kind = AmptekReplyKind(r.id)
        if case .ack(let code) = kind, !AmptekAck(code: code).isOK {
            let ack = r.data.withUnsafeBytes { AmptekAck(code: code, data: $0) }
            throw InstrumentError(.rejected, device: name, "the detector refused \(request.description): \(ack.message)")
        }
        guard kind.answers(request.expectedReply) else {
            throw InstrumentError(
                .protocolViolation, device: name,
                "asked for \(request.description) and got a packet \(r.id) of \(r.data.count) bytes; is another program talking to the detector?")
        }
        if case .ack(AmptekAck.okSharingRequest) = kind {
            sink.event(Event(kind: .alarm, source: name, hostTime: r.arrival, message: "another host asks to share the detector's interface (ACK 0C); the daemon keeps control while it polls"))
        }
        return r
    }

    /// Waits for the reply to an outstanding poll (handled as usual) or gives it up.
    private func finishPending(link: DeviceLink, sink: any RecordSink) throws {
        var waitedNs: Int64 = 0
        while let p = pending {
            let elapsed = max(sink.clock.now().nanoseconds - p.sentAt.nanoseconds, waitedNs)
            if elapsed >= pollTimeoutNs {
                framer.flush { route($0, arrival: sink.clock.now(), sink: sink) }
                pending = nil
                if p.poll == .spectrum { restartEpoch() }
                sink.event(Event(kind: .alarm, source: name, hostTime: sink.clock.now(), message: "no reply to the outstanding poll within \(pollTimeoutNs / 1_000_000) ms; given up"))
                break
            }
            let slice = min(50_000_000, pollTimeoutNs - elapsed)
            let read = try readOnce(link, timeoutNs: slice)
            if read.count == 0 { waitedNs += slice } else { feed(count: read.count, arrival: read.hostTime, sink: sink) }
        }
        if let why = restartReason {
            // A reboot found while finishing a poll: record it; the MCA is stopped until
            // `enable` (or a reconnect) starts it again.
            restartReason = nil
            sink.event(Event(kind: .alarm, source: name, hostTime: sink.clock.now(), message: "detector reset: \(why); `enable` restarts the acquisition", values: ["reason": .string("reset")]))
            phase = .stopped
        }
        // A preset update due is made by the caller's own requests or the next frame.
        presetUpdate = nil
    }

    /// Reads and forgets whatever a previous session left in flight.
    private func drain(_ link: DeviceLink) throws {
        for _ in 0..<20 {
            let r = try readOnce(link, timeoutNs: 10_000_000)
            if r.count == 0 { break }
        }
        framer.reset()
    }

    // MARK: Link

    private func feed(count: Int, arrival: HostInstant, sink: any RecordSink) {
        bytesReceived &+= count
        framer.feed(UnsafeRawBufferPointer(rebasing: readBuffer[0..<count]), stamp: arrival.nanoseconds) { item in
            route(item, arrival: arrival, sink: sink)
        }
    }

    private func readOnce(_ link: DeviceLink, timeoutNs: Int64) throws -> TransportRead {
        switch link {
        case .byteStream(let t): try t.read(into: readBuffer, timeout: .nanoseconds(timeoutNs))
        case .packets(let t): try t.receive(into: readBuffer, timeout: .nanoseconds(timeoutNs))
        }
    }

    private func write(_ bytes: [UInt8], _ link: DeviceLink) throws {
        try bytes.withUnsafeBytes { b in
            switch link {
            case .byteStream(let t): try t.write(b, timeout: .seconds(1))
            case .packets(let t): try t.send(b, timeout: .seconds(1))
            }
        }
    }
}

extension Duration {
    fileprivate var nanosecondsValue: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}
