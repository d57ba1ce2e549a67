import Foundation
import OperandoCore
import OperandoVirtualCell

/// The device side of the demo X-ray fluorescence detector (see Drivers/Demo/PROTOCOL.md).
public final class DemoXRFSimulator: @unchecked Sendable {
    public let serialNumber: String
    private let cell: VirtualCell
    private let clock: any HostClock
    /// The detector's own clock (stamps in the spectrum packets).
    public let deviceClock: SimulatedDeviceClock
    private var noise: NoiseSource
    private var channels = 2048
    private var interval: Duration = .milliseconds(500)
    private var running = false
    private var sequence: UInt32 = 0
    private var acquisitionStart: HostInstant

    public init(
        cell: VirtualCell, clock: any HostClock, serialNumber: String = "XRF-0001",
        deviceClock: SimulatedDeviceClock = SimulatedDeviceClock(driftPPM: -40, offsetNs: 987_654_000_000), seed: UInt64 = 2
    ) {
        self.cell = cell
        self.clock = clock
        self.serialNumber = serialNumber
        self.deviceClock = deviceClock
        acquisitionStart = clock.now()
        noise = NoiseSource(seed: seed)
    }

    /// Serves the device end of `link` until `shouldStop` returns true or the link goes away.
    public func serve(_ link: any PacketTransport, shouldStop: () -> Bool) {
        var buffer = [UInt8](repeating: 0, count: 512)
        while !shouldStop() {
            do {
                let read = try buffer.withUnsafeMutableBytes { try link.receive(into: $0, timeout: .milliseconds(20)) }
                if read.count > 0 {
                    let reply = respond(to: String(decoding: buffer[0..<read.count], as: UTF8.self))
                    try send(Array(reply.utf8), link)
                }
                if running, clock.now().nanoseconds - acquisitionStart.nanoseconds >= interval.nanosecondsValue {
                    try send(spectrum(), link)
                }
            } catch {
                return
            }
        }
    }

    private func send(_ bytes: [UInt8], _ link: any PacketTransport) throws {
        try bytes.withUnsafeBytes { try link.send($0, timeout: .seconds(1)) }
    }

    private func respond(to command: String) -> String {
        let parts = command.split(separator: " ")
        switch parts.first.map(String.init) {
        case "IDN": return "IDOPERANDO,DEMO-XRF,\(serialNumber),0.9.1"
        case "ACQ":
            guard parts.count == 3, let n = Int(parts[1]), (256...8192).contains(n), let ms = Int(parts[2]), (10...60000).contains(ms) else {
                return "ER ACQ wants channels 256..8192 and interval 10..60000 ms"
            }
            channels = n
            interval = .milliseconds(ms)
            running = true
            sequence = 0
            acquisitionStart = clock.now()
            return "OK"
        case "HALT":
            running = false
            return "OK"
        default: return "ER unknown command"
        }
    }

    /// Expected counts per channel for the cell's state of charge.
    private func spectrum() -> [UInt8] {
        let start = acquisitionStart
        let liveSeconds = clock.now().seconds(since: start)
        let soc = cell.snapshot.stateOfCharge
        // (energy keV, counts per second, shift keV per unit SOC)
        let lines: [(Double, Double, Double)] = [
            (5.899, 900, 0), (6.490, 130, 0),  // Mn Kα, Kβ
            (6.930, 700, 0), (7.649, 100, 0),  // Co Kα, Kβ
            (7.478, 1500 * (0.8 + 0.4 * soc), 0.004), (8.265, 220 * (0.8 + 0.4 * soc), 0.004),  // Ni follows the charge
        ]
        let sigma = 0.075  // keV, detector resolution
        var packet = [UInt8]()
        packet.reserveCapacity(24 + 4 * channels)
        packet += Array("SPEC".utf8)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { packet += $0 } }
        put(sequence)
        put(UInt64(0))  // start and live time: filled in when the packet is complete
        put(UInt32(0))
        put(UInt32(channels))
        for ch in 0..<channels {
            let e = Double(ch) * 0.01
            var rate = 40 * exp(-e / 6)  // Compton/bremsstrahlung background
            for (e0, cps, shift) in lines {
                let d = e - (e0 + shift * soc)
                rate += cps * 0.01 / (sigma * 2.5066) * exp(-d * d / (2 * sigma * sigma))
            }
            put(noise.poisson(rate * liveSeconds))
        }
        sequence &+= 1
        // The acquisition ends as the packet leaves (the next one starts there): start and live
        // time on the detector's clock, µs.
        let end = clock.now()
        acquisitionStart = end
        let startDevice = deviceClock.deviceNanoseconds(at: start)
        withUnsafeBytes(of: UInt64(max(0, startDevice) / 1000).littleEndian) { packet.replaceSubrange(8..<16, with: $0) }
        withUnsafeBytes(of: UInt32((deviceClock.deviceNanoseconds(at: end) - startDevice) / 1000).littleEndian) { packet.replaceSubrange(16..<20, with: $0) }
        return packet
    }
}

extension Duration {
    fileprivate var nanosecondsValue: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}
