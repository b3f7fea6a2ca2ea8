// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

interface IERC20Transfer {
    function transfer(address to, uint256 value) external returns (bool);
}

/// @title TestBatchSender
/// @notice Sends several ERC-20 transfers from its own balance in one transaction, so that one
/// transaction carries several `Transfer` logs (Turnpike's deposit tests). Anyone may call it.
/// Not for production use.
contract TestBatchSender {
    function send(address token, address[] calldata to, uint256[] calldata values) external {
        require(to.length == values.length, "TestBatchSender: length mismatch");
        for (uint256 i = 0; i < to.length; i++) {
            require(IERC20Transfer(token).transfer(to[i], values[i]), "TestBatchSender: transfer failed");
        }
    }
}
