import OperandoCore

/// Driver for the demo X-ray fluorescence detector (Drivers/Demo/PROTOCOL.md): spectra as frames
/// of `channels` u32 counts, stamped with the acquisition start on the device clock.
public final class DemoXRFDriver: Instrument, @unchecked Sendable {
    public static let driverName = "demo-xrf"
    public static let driverVersion = "1.0.0"
    public static let linkKind = LinkKind.packets
    /// Spectrum packets carry the detector clock in whole microseconds.
    public static let clockResolutionNs = 1000.0
    /// The demo detector is simulated in the daemon's process: its packets reach the driver
    /// within about 40 µs of being stamped.
    public static let oneWayLatencyMaxNs: Int64 = 100_000

    public let name: String
    public let channels: Int
    public let intervalMilliseconds: Int
    public let streams: [StreamDescriptor]
    private var packet: [UInt8]
    private static let headerBytes = 24
    private var lastData = HostInstant(nanoseconds: 0)
    /// Three acquisition intervals plus a second without a packet means the detector stopped answering.
    public var silenceLimit: Int64 { Int64(intervalMilliseconds) * 3_000_000 + 1_000_000_000 }

    public init(name: String, settings: DeviceSettings) throws {
        self.name = name
        channels = settings.int("channels") ?? 2048
        intervalMilliseconds = settings.int("interval_ms") ?? 500
        guard (256...8192).contains(channels) else {
            throw InstrumentError(.unsupported, device: name, "channels = \(channels) is outside 256…8192")
        }
        guard (10...60000).contains(intervalMilliseconds) else {
            throw InstrumentError(.unsupported, device: name, "interval_ms = \(intervalMilliseconds) is outside 10…60000")
        }
        streams = [
            StreamDescriptor(
                name: "\(name)/spectrum", device: name, kind: .frames, elementType: .uint32,
                fields: [Field("counts", unit: "counts")], shape: [channels],
                nominalRateHz: 1000.0 / Double(intervalMilliseconds), maxPayloadBytes: channels * 4)
        ]
        packet = [UInt8](repeating: 0, count: Self.headerBytes + 4 * 8192)
    }

    public func setup(link: DeviceLink, sink: any RecordSink) throws -> DeviceIdentity {
        guard case .packets(let port) = link else {
            throw InstrumentError(.unsupported, device: name, "the demo XRF detector needs a packet transport")
        }
        _ = try? request("HALT", port, sink: sink)
        let id = try request("IDN", port, sink: sink)
        let fields = id.dropFirst(2).split(separator: ",").map(String.init)
        guard id.hasPrefix("ID"), fields.count == 4, fields[1] == "DEMO-XRF" else {
            throw InstrumentError(.protocolViolation, device: name, "unexpected identity \"\(id)\"; is this a demo XRF detector?")
        }
        let reply = try request("ACQ \(channels) \(intervalMilliseconds)", port, sink: sink)
        guard reply == "OK" else { throw InstrumentError(.rejected, device: name, "ACQ was refused: \(reply)") }
        lastData = sink.clock.now()
        sink.event(Event(kind: .stateChange, source: name, hostTime: sink.clock.now(), message: "acquisition started: \(channels) channels every \(intervalMilliseconds) ms",
                         values: ["channels": .integer(Int64(channels)), "interval_ms": .integer(Int64(intervalMilliseconds))]))
        return DeviceIdentity(model: fields[1], serialNumber: fields[2], firmware: fields[3], protocolVersion: "demo-xrf/1")
    }

    public func acquire(link: DeviceLink, sink: any RecordSink, budget: Duration) throws {
        guard case .packets(let port) = link else { return }
        let read = try packet.withUnsafeMutableBytes { try port.receive(into: $0, timeout: budget) }
        guard read.count > 0 else {
            let silent = read.hostTime.nanoseconds - lastData.nanoseconds
            if silent > silenceLimit {
                throw InstrumentError(.replyTimedOut, device: name, "no spectrum for \(silent / 1_000_000) ms with \(intervalMilliseconds) ms acquisitions; the detector stopped answering")
            }
            return
        }
        lastData = read.hostTime
        handle(count: read.count, hostTime: read.hostTime, sink: sink)
    }

    public func shutdown(link: DeviceLink) {
        guard case .packets(let port) = link else { return }
        try? Array("HALT".utf8).withUnsafeBytes { try port.send($0, timeout: .milliseconds(200)) }
    }

    private func request(_ text: String, _ port: any PacketTransport, sink: any RecordSink) throws -> String {
        try Array(text.utf8).withUnsafeBytes { try port.send($0, timeout: .seconds(1)) }
        let deadline = sink.clock.now().advanced(byNanoseconds: 2_000_000_000)
        while sink.clock.now() < deadline {
            let read = try packet.withUnsafeMutableBytes { try port.receive(into: $0, timeout: .milliseconds(100)) }
            guard read.count > 0 else { continue }
            if read.count >= 4 && packet[0..<4] == [0x53, 0x50, 0x45, 0x43] {  // "SPEC": data during setup is kept
                handle(count: read.count, hostTime: read.hostTime, sink: sink)
                continue
            }
            return String(decoding: packet[0..<read.count], as: UTF8.self)
        }
        throw InstrumentError(.replyTimedOut, device: name, "no reply to \"\(text)\" within 2 s; check the cable and that the detector is powered")
    }

    private func handle(count: Int, hostTime: HostInstant, sink: any RecordSink) {
        packet.withUnsafeBytes { p in
            guard count >= Self.headerBytes, p[0] == 0x53, p[1] == 0x50, p[2] == 0x45, p[3] == 0x43 else {
                alarm("a \(count)-byte packet that is not a spectrum", hostTime, sink)
                return
            }
            let deviceMicroseconds = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            let liveMicroseconds = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
            let n = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
            guard n == channels, count == Self.headerBytes + 4 * n else {
                alarm("a spectrum packet of \(count) bytes claiming \(n) channels (expected \(channels))", hostTime, sink)
                return
            }
            // Counts are little-endian u32 on the wire and on disk: pushed as they are.
            sink.push(stream: 0, hostTime: hostTime, deviceTime: Int64(deviceMicroseconds) * 1000,
                      payload: UnsafeRawBufferPointer(rebasing: p[Self.headerBytes..<count]))
            // The detector sends the spectrum when the acquisition ends: that instant, on its
            // clock, is what the arrival time bounds.
            sink.clockStamp(deviceTime: (Int64(deviceMicroseconds) + Int64(liveMicroseconds)) * 1000, arrival: hostTime)
        }
    }

    private func alarm(_ what: String, _ hostTime: HostInstant, _ sink: any RecordSink) {
        sink.event(Event(kind: .alarm, source: name, hostTime: hostTime, message: "skipped \(what) from the detector"))
    }
}
