"""File formats, bytes in and bytes out: cpio/initrd, EROFS, mkfs tools, dm-verity, GPT, DER/PKCS#7, PE/Authenticode, PCR policies, the UKI, the DDI."""
