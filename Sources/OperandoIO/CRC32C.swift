import COperandoShim

/// CRC-32C (Castagnoli), the checksum of every record on disk. Hardware-accelerated (SSE4.2)
/// where the CPU has it.
public enum CRC32C {
    /// The CRC of `bytes`, or its continuation from `crc` (the CRC of what came before).
    @inline(__always)
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return ccrc32c_extend(crc, base, bytes.count)
    }

    /// `checksum` as a plain function value, for `StreamChannel`'s producer-side checksums.
    public static let function: @Sendable (UnsafeRawBufferPointer, UInt32) -> UInt32 = { checksum($0, continuing: $1) }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// The table implementation, for tests that compare both paths.
    public static func softwareChecksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { ccrc32c_extend_software(0, $0.baseAddress, $0.count) }
    }

    public static var isHardwareAccelerated: Bool { ccrc32c_is_hardware() != 0 }
}
