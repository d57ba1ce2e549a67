import AmptekDriver
import AmptekSimulator
import OperandoCore
import OperandoIO
import OperandoTestSupport
import OperandoVirtualCell
import Synchronization
import XCTest

extension CollectingSink {
    /// The spectrum stream's records.
    var frames: [Record] { records(0) }
    /// The status stream's records.
    var statuses: [Record] { records(1) }
}

/// A simulated X-123SDD served on its own thread over an in-memory link, reached as packets
/// (USB) or as a byte stream (RS-232).
final class SimulatorBench: @unchecked Sendable {
    enum Mode { case packets, byteStream, dripFed }

    let clock: ManualClock
    let cell: VirtualCell
    let simulator: AmptekSimulator
    let link: InMemoryLink
    let mode: Mode
    private var thread: IOThread?
    private let stop = StopFlag()

    init(mode: Mode = .packets, stateOfCharge: Double = 0.5, seed: UInt64 = 11) {
        clock = ManualClock()
        var p = VirtualCell.Parameters()
        p.initialStateOfCharge = stateOfCharge
        cell = VirtualCell(p)
        self.mode = mode
        simulator = AmptekSimulator(
            cell: cell, clock: clock, serialNumber: "X123-31415", deviceClock: SimulatedDeviceClock(driftPPM: 35, offsetNs: 42_000_000_000), seed: seed)
        link = InMemoryLink(clock: clock)
        let simulator = simulator
        let stop = stop
        if mode == .packets {
            let device = link.devicePackets
            thread = IOThread(name: "amptek-sim") { simulator.serve(device, shouldStop: { stop.isSet }) }
        } else {
            let device = link.deviceByteStream
            thread = IOThread(name: "amptek-sim") { simulator.serve(device, shouldStop: { stop.isSet }) }
        }
    }

    /// The driver's end.
    var host: DeviceLink {
        switch mode {
        case .packets: .packets(link.hostPackets)
        case .byteStream: .byteStream(link.hostByteStream)
        case .dripFed: .byteStream(OneByteAtATime(link.hostByteStream))
        }
    }

    /// Puts bytes on the wire towards the driver, as a corrupted transfer would.
    func inject(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { b in
            if mode == .packets { try link.devicePackets.send(b, timeout: .seconds(1)) } else { try link.deviceByteStream.write(b, timeout: .seconds(1)) }
        }
    }

    /// The simulator stops answering (the thread ends; the link stays plugged).
    func silence() {
        stop.set()
        thread?.join()
        thread = nil
    }

    deinit { silence() }
}

/// Settings as `[device.settings]` would give them.
func settings(_ values: [String: EventValue] = [:]) -> DeviceSettings {
    var v: [String: EventValue] = ["channels": .integer(1024), "poll_ms": .integer(200)]
    v.merge(values) { _, new in new }
    return DeviceSettings(v)
}

/// Moves the manual clock by one poll period per call and lets the driver work, until
/// `condition` holds; `calls` guards against a hang and is not a timing bound.
func pump(_ driver: AmptekDriver, _ bench: SimulatorBench, _ sink: CollectingSink, step: Double? = nil, calls: Int = 400, file: StaticString = #filePath, line: UInt = #line, until condition: () -> Bool) throws {
    let dt = step ?? Double(driver.settings.pollMilliseconds) / 1000
    for _ in 0..<calls where !condition() {
        bench.clock.advance(seconds: dt)
        try driver.acquire(link: bench.host, sink: sink, budget: .milliseconds(100))
        // While a reply is still coming in (one byte per read when drip-fed), the clock stands
        // still: only a link that has gone quiet lets time pass.
        var received = -1
        while !condition(), driver.isAwaitingReply, driver.bytesReceived != received {
            received = driver.bytesReceived
            try driver.acquire(link: bench.host, sink: sink, budget: .milliseconds(20))
        }
    }
    XCTAssertTrue(condition(), "the condition did not come true within \(calls) polls", file: file, line: line)
}

/// Bytes from a hex string ("F5 FA 01 01"; spaces ignored).
func hex(_ s: String) -> [UInt8] {
    let digits = Array(s.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
}

/// Runs the framer over `bytes` cut into `chunks` and collects what it finds (packets copied).
func frame(_ chunks: [[UInt8]], framer: AmptekFramer = AmptekFramer()) -> [FoundItem] {
    var found: [FoundItem] = []
    for (i, c) in chunks.enumerated() {
        c.withUnsafeBytes { b in
            framer.feed(b, stamp: Int64(i)) { item in
                switch item {
                case .packet(let id, let data, let stamp): found.append(.packet(id, Array(data), stamp))
                case .discarded(let n, let reason): found.append(.discarded(n, reason))
                }
            }
        }
    }
    return found
}

enum FoundItem: Equatable {
    case packet(AmptekPacketID, [UInt8], Int64)
    case discarded(Int, AmptekDiscardReason)

    var packet: (AmptekPacketID, [UInt8])? {
        if case .packet(let id, let d, _) = self { return (id, d) }
        return nil
    }
}
